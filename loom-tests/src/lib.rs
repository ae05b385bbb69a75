//! loom models of fila-runtime's own synchronization. The models live in
//! `tests/models.rs` and compile only under `--cfg fila_loom`; run them with
//! `loom-tests/run`. See `loom-tests/README.md` for what each one covers.
