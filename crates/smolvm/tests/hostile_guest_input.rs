//! Seeded randomized runs of the fuzz entry points of this crate (`smolvm::internals::fuzzing`): the agent client
//! against hostile replies and the console keeper plus log tail readers against random console output,
//! plus a replay of the fuzzers' committed corpora (`fuzz/corpus/{agent,console}`), so CI runs the same
//! code the coverage-guided fuzzers run. Deterministic seeds: a failure reproduces.

use smolvm::internals::fuzzing::{agent_replies, console};
use smolvm_protocol::fuzzing::{corpus, Rng, PLACEHOLDER_ID};
use smolvm_protocol::{Done, EnvVars, ExitStatus, Frame, FrameType, Reply};

/// Up to `max - 1` random bytes.
fn some_bytes(rng: &mut Rng, max: usize) -> Vec<u8> {
    let n = rng.below(max);
    rng.bytes(n)
}

/// A reply a hostile agent might send for the live request: valid, valid with odd values, or a frame
/// of any type with a random or odd JSON payload.
fn reply(rng: &mut Rng) -> Vec<u8> {
    let id = if rng.below(6) == 0 {
        rng.next_u64() as u32
    } else {
        PLACEHOLDER_ID
    };
    let frame = match rng.below(8) {
        0 => Reply::Stdout(some_bytes(rng, 200)).to_frame(id).unwrap(),
        1 => Reply::FileData(some_bytes(rng, 200)).to_frame(id).unwrap(),
        2 => Reply::Exit(ExitStatus {
            code: Some(rng.next_u64() as i32),
            signal: (rng.below(2) == 0).then(|| rng.next_u64() as i32),
            timed_out: rng.below(4) == 0,
        })
        .to_frame(id)
        .unwrap(),
        3 => Reply::Done(Done {
            bytes: (rng.below(2) == 0).then(|| rng.below(400) as u64),
            mode: (rng.below(2) == 0).then(|| rng.next_u64() as u32),
        })
        .to_frame(id)
        .unwrap(),
        4 => Reply::EnvVars(EnvVars {
            vars: [("A".to_string(), "1".to_string())].into(),
        })
        .to_frame(id)
        .unwrap(),
        5 => {
            let odd: [&[u8]; 4] = [
                br#"{"code":-2147483648,"signal":2147483647,"timed_out":true}"#,
                br#"{"bytes":18446744073709551615,"mode":4294967295}"#,
                br#"{"kind":"no_such_kind","message":"\u0000\u001b[2J"}"#,
                br#"{"vars":{"A":"1","":"x","B=C":"\n"}}"#,
            ];
            let t = FrameType::ALL[rng.below(FrameType::ALL.len())];
            Frame::new(t, id, odd[rng.below(odd.len())].to_vec())
        }
        _ => {
            let t = FrameType::ALL[rng.below(FrameType::ALL.len())];
            Frame::new(t, id, some_bytes(rng, 100))
        }
    };
    frame.encode().unwrap()
}

#[test]
fn agent_client_survives_hostile_replies() {
    for seed in 1..=600u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut data = vec![seed as u8];
        for _ in 0..rng.below(8) {
            data.extend(reply(&mut rng));
        }
        if rng.below(4) == 0 {
            data.truncate(data.len().saturating_sub(rng.below(6)));
        }
        agent_replies(&data);
    }
}

#[test]
fn console_keeper_and_tails_survive_random_output() {
    let mut rng = Rng(0x00c0_ffee_d00d_f00d);
    for _ in 0..60 {
        let mut data = vec![rng.below(8) as u8, rng.below(20) as u8];
        for _ in 0..rng.below(12) {
            match rng.below(4) {
                0 => data.extend(b"\r\n\n  \r"),
                1 => data.extend(vec![b'x'; rng.below(300)]),
                2 => data.extend("ünïcode ✓ line\n".as_bytes()),
                _ => data.extend(some_bytes(&mut rng, 200)),
            }
        }
        console(&data);
    }
    // Output far beyond the cap, in one go.
    let mut big = vec![0u8, 5];
    big.extend((0..100_000u32).flat_map(|i| format!("line {i}\n").into_bytes()));
    console(&big);
}

#[test]
fn committed_corpora_replay() {
    for data in corpus("agent") {
        agent_replies(&data);
    }
    for data in corpus("console") {
        console(&data);
    }
}
