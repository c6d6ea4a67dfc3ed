//! stylefarm's tensor-free code, shared by the coordinator, the workers and the client: no
//! candle and no network, so any of them can use it without pulling either in.

pub mod cache;
