//! `quarry-core`: the core pool process. All behaviour lives in the `core_pool` library.

fn main() -> std::process::ExitCode {
    core_pool::cli::main()
}
