//! The SMTP listener's dialogue, driven by whatever a client on the
//! network sends: any bytes must end in replies and a closed session,
//! within the dialogue's bounds, never a panic. Messages taken are read
//! as the listener would (`kci::inbound::parse`), without a store.
#![no_main]

use kci::inbound::smtp::{Limits, Names, RECEIVED, dialogue};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a tokio runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let names = Names::new("keys@isp.example");
        let handler = |mail: Vec<u8>| async move {
            match kci::inbound::parse(&mail) {
                Ok(_) => RECEIVED.to_string(),
                Err(e) => format!("554 5.6.0 {e}"),
            }
        };
        let mut said = Vec::new();
        let mut input = tokio::io::BufReader::new(data);
        let _ = dialogue(&mut input, &mut said, &names, Limits::default(), &handler).await;
        // Every reply is a whole line.
        assert!(said.is_empty() || said.ends_with(b"\r\n"));
    });
});
