//! Randomized robustness test: many random and mutated frames through the decoder and both parsers.
//! Nothing may panic, and no decode may allocate beyond the frame limit (the decoder checks the length
//! before allocating). Deterministic seeds, so a failure reproduces. The committed corpora of the
//! coverage-guided fuzzers (`fuzz/corpus/{frames,resync}`) are replayed through the same entry points.

use std::collections::BTreeMap;

use smolvm_protocol::fuzzing::{corpus, decode_resync, decode_stream, Rng};
use smolvm_protocol::{
    BootStage, Command, Done, EnvSet, EnvUnset, EnvVars, ErrorKind, ErrorReply, ExecStart,
    ExitStatus, FileRead, FileWrite, Frame, FrameType, Hello, Ready, Reply, Request,
};

/// One valid frame of every kind.
fn valid_frames() -> Vec<Frame> {
    let env: BTreeMap<String, String> = [("A".to_string(), "it's $(x)".to_string())].into();
    let requests = vec![
        Request::Exec(ExecStart {
            command: Command::Shell("echo hi".into()),
            env: env.clone(),
            cwd: Some("/tmp".into()),
            timeout_ms: Some(1000),
            stdin: true,
        }),
        Request::Exec(ExecStart {
            command: Command::Argv(vec!["ls".into(), "-l".into()]),
            env: BTreeMap::new(),
            cwd: None,
            timeout_ms: None,
            stdin: false,
        }),
        Request::Stdin(b"input".to_vec()),
        Request::Cancel,
        Request::FileWrite(FileWrite {
            path: "/a/b".into(),
            mode: 0o644,
            size: 10,
            create_parents: true,
        }),
        Request::FileRead(FileRead {
            path: "/etc/hostname".into(),
        }),
        Request::FileData(vec![1, 2, 3]),
        Request::EnvSet(EnvSet { vars: env.clone() }),
        Request::EnvUnset(EnvUnset {
            keys: vec!["A".into()],
        }),
        Request::EnvList,
        Request::PowerOff,
        Request::Ping,
        Request::Hello(Hello { nonce: 42 }),
    ];
    let replies = [
        Reply::Ready(Ready {
            protocol_version: 1,
            agent_version: "0.1.0".into(),
            nonce: Some(u64::MAX),
            boot_stages: vec![BootStage {
                name: "init".into(),
                micros: 5,
            }],
        }),
        Reply::Stdout(b"out".to_vec()),
        Reply::Stderr(b"err".to_vec()),
        Reply::Exit(ExitStatus {
            code: None,
            signal: Some(9),
            timed_out: true,
        }),
        Reply::FileData(vec![0; 16]),
        Reply::EnvVars(EnvVars { vars: env }),
        Reply::Done(Done {
            bytes: Some(3),
            mode: Some(0o600),
        }),
        Reply::Error(ErrorReply::new(ErrorKind::NotFound, "no such file")),
    ];
    let mut frames: Vec<Frame> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| r.to_frame(i as u32 + 1).unwrap())
        .collect();
    frames.extend(
        replies
            .iter()
            .enumerate()
            .map(|(i, r)| r.to_frame(i as u32).unwrap()),
    );
    frames
}

#[test]
fn valid_frames_round_trip() {
    for f in valid_frames() {
        let bytes = f.encode().unwrap();
        let back = Frame::read_from(&mut &bytes[..]).unwrap();
        assert_eq!(back, f);
        let as_req = Request::from_frame(back.clone());
        let as_reply = Reply::from_frame(back.clone());
        // Exactly one direction accepts each frame type, except file data which flows both ways.
        if f.frame_type == FrameType::FileData {
            assert!(as_req.is_ok() && as_reply.is_ok());
        } else {
            assert!(as_req.is_ok() != as_reply.is_ok(), "{:?}", f.frame_type);
        }
        if let Ok(r) = as_req {
            assert_eq!(r.to_frame(f.request_id).unwrap(), f);
        }
        if let Ok(r) = as_reply {
            assert_eq!(r.to_frame(f.request_id).unwrap(), f);
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..20_000 {
        let n = rng.below(64);
        let data = rng.bytes(n);
        decode_stream(&data);
        decode_resync(&data, 1 + n % 5);
    }
}

#[test]
fn random_headers_with_plausible_lengths_never_panic() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for _ in 0..20_000 {
        let len = rng.below(300) as u32;
        let mut data = len.to_be_bytes().to_vec();
        data.push(rng.below(22) as u8);
        data.extend(rng.bytes(4));
        let body = rng.below(310);
        data.extend(rng.bytes(body));
        decode_stream(&data);
    }
}

#[test]
fn mutated_valid_frames_never_panic() {
    let valid: Vec<Vec<u8>> = valid_frames().iter().map(|f| f.encode().unwrap()).collect();
    let mut rng = Rng(0x0bad_5eed_0bad_5eed);
    let mut decoded = 0;
    for _ in 0..50_000 {
        let mut data = valid[rng.below(valid.len())].clone();
        for _ in 0..=rng.below(4) {
            let pos = rng.below(data.len());
            match rng.below(5) {
                0 => data[pos] = rng.next_u64() as u8,
                1 => data[pos] ^= 1 << rng.below(8),
                2 => data.truncate(pos),
                3 => {
                    let extra = rng.below(8);
                    let bytes = rng.bytes(extra);
                    data.splice(pos..pos, bytes);
                }
                _ => {
                    // Keep the header consistent with the new length so the JSON parsers see it.
                    if data.len() >= 9 {
                        let len = (data.len() - 4) as u32;
                        data[..4].copy_from_slice(&len.to_be_bytes());
                    }
                }
            }
            if data.is_empty() {
                break;
            }
        }
        decoded += decode_stream(&data);
    }
    // The mutations keep a good share of frames decodable, so the parsers were exercised.
    assert!(decoded > 10_000, "only {decoded} frames decoded");
}

#[test]
fn concatenated_streams_stay_in_sync() {
    let frames = valid_frames();
    let mut data = Vec::new();
    for f in &frames {
        data.extend(f.encode().unwrap());
        // An unknown type in between must not desync the stream.
        data.extend([0, 0, 0, 8, 99, 0, 0, 0, 1, 1, 2, 3]);
    }
    assert_eq!(decode_stream(&data), frames.len());
}

#[test]
fn json_payload_mutations_never_panic() {
    let mut rng = Rng(0x5555_aaaa_3333_cccc);
    let jsons: Vec<Frame> = valid_frames()
        .into_iter()
        .filter(|f| f.payload.first() == Some(&b'{'))
        .collect();
    let alphabet = br#"{}[]":,0123456789-eE.truefalsnul\ "#;
    for _ in 0..30_000 {
        let mut f = jsons[rng.below(jsons.len())].clone();
        for _ in 0..=rng.below(3) {
            if f.payload.is_empty() {
                break;
            }
            let pos = rng.below(f.payload.len());
            f.payload[pos] = alphabet[rng.below(alphabet.len())];
        }
        let _ = Request::from_frame(f.clone());
        let _ = Reply::from_frame(f);
    }
    // Deep nesting is refused by serde_json's recursion limit, not by a stack overflow.
    let deep = Frame::new(FrameType::Exec, 1, [b'['; 100_000].to_vec());
    assert!(Request::from_frame(deep).is_err());
}

#[test]
fn resync_finds_every_marked_frame_among_random_bytes() {
    let mut rng = Rng(0x5eed_1e55_f00d_cafe);
    let frames = valid_frames();
    for round in 0..2_000 {
        // Random garbage (never containing a marker by chance: 16 bytes), then a marked frame. The
        // garbage's first byte is not 0: after a frame, a 0 would start a plausible header whose length
        // may swallow the next marker (in the real stream only the bytes before the first marker are
        // stale, and the decoder hunts through those).
        let mut data = Vec::new();
        let mut marked = 0;
        for _ in 0..1 + rng.below(4) {
            let n = rng.below(200);
            let mut garbage = rng.bytes(n);
            if let Some(b) = garbage.first_mut() {
                *b |= 1;
            }
            data.extend(garbage);
            data.extend(smolvm_protocol::with_sync(&frames[rng.below(frames.len())]).unwrap());
            marked += 1;
        }
        let got = decode_resync(&data, 1 + round % 9);
        assert!(got >= marked, "round {round}: {got} < {marked}");
    }
}

#[test]
fn committed_corpora_replay() {
    for data in corpus("frames") {
        decode_stream(&data);
    }
    for data in corpus("resync") {
        if let Some((chunk, rest)) = data.split_first() {
            decode_resync(rest, usize::from(*chunk));
        }
    }
}
