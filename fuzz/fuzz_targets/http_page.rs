#![no_main]
// See src/fuzzing.rs for what the input means.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = recon::fuzzing::http_page(data);
});
