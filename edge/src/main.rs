//! `quarry-edge`: the farm-side relay. All behaviour lives in the `edge` library.

fn main() -> std::process::ExitCode {
    edge::cli::main()
}
