//! Postgres: the control plane's records (later) and the embedded throwaway
//! cluster used by tests and `jax-csi local`.

pub mod embedded;
