//! `behalf demo`: the whole story end to end on loopback, with nothing to configure.

use super::exit;

/// Runs the demo: exit 0 when every expectation held, 1 when one failed, 70 when it could not
/// be set up.
pub fn run() -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return exit::INTERNAL;
        }
    };
    match runtime.block_on(crate::demo::run()) {
        Ok(true) => exit::OK,
        Ok(false) => exit::NEGATIVE,
        Err(e) => {
            eprintln!("error: {e}");
            exit::INTERNAL
        }
    }
}
