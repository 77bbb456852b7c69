//! Job translation lives in [`relay::upstream::translate`], shared with the edge's backup pool.

pub use relay::upstream::translate::*;
