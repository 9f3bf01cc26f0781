//! Fuzz target: arbitrary bytes through the frame decoder and both message parsers.
//! Under cargo-fuzz (`--cfg fuzzing`) this is a libFuzzer target; otherwise a plain program that replays
//! the files (or directories of files) named on its command line, so it builds and runs on stable.

#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    smolvm_protocol::fuzzing::decode_stream(data);
});

#[cfg(not(fuzzing))]
fn main() {
    let mut inputs = 0usize;
    for arg in std::env::args_os().skip(1) {
        let path = std::path::PathBuf::from(arg);
        let files: Vec<std::path::PathBuf> = match std::fs::read_dir(&path) {
            Ok(dir) => dir.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(_) => vec![path],
        };
        for file in files {
            match std::fs::read(&file) {
                Ok(data) => {
                    smolvm_protocol::fuzzing::decode_stream(&data);
                    inputs += 1;
                }
                Err(e) => eprintln!("skipping {}: {e}", file.display()),
            }
        }
    }
    println!("{inputs} inputs decoded without a panic");
}
