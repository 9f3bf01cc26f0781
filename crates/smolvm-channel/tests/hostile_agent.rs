//! Seeded randomized runs of the fuzz entry points of this crate (`smolvm_channel::fuzzing`): the
//! host's greeting and the channel owner against agents that send random, mutated and odd streams,
//! plus a replay of the fuzzers' committed corpora (`fuzz/corpus/{greeting,mux}`), so CI runs the same
//! code the coverage-guided fuzzers run. Deterministic seeds: a failure reproduces.

use smolvm_channel::fuzzing::{greeting, mux_upstream};
use smolvm_protocol::fuzzing::{corpus, Rng, PLACEHOLDER_ID};
use smolvm_protocol::{
    with_sync, BootStage, Done, ErrorKind, ErrorReply, ExitStatus, Frame, FrameType, Ready, Reply,
};

/// One piece of an agent's stream: a valid reply (mostly for the live request), a greeting, a frame
/// of any type with a random payload, or raw garbage.
fn piece(rng: &mut Rng) -> Vec<u8> {
    let id = match rng.below(4) {
        0 => rng.next_u64() as u32,
        1 => 0,
        _ => PLACEHOLDER_ID,
    };
    match rng.below(7) {
        0 => Reply::Stdout(vec![b'o'; rng.below(100)])
            .to_frame(id)
            .unwrap()
            .encode()
            .unwrap(),
        1 => Reply::Exit(ExitStatus {
            code: Some(rng.next_u64() as i32),
            signal: None,
            timed_out: rng.below(2) == 0,
        })
        .to_frame(id)
        .unwrap()
        .encode()
        .unwrap(),
        2 => Reply::Done(Done::default())
            .to_frame(id)
            .unwrap()
            .encode()
            .unwrap(),
        3 => {
            let ready = Ready {
                protocol_version: rng.below(4) as u32,
                agent_version: "x".repeat(rng.below(40)),
                nonce: (rng.below(2) == 0).then(|| rng.next_u64()),
                boot_stages: (0..rng.below(4))
                    .map(|i| BootStage {
                        name: format!("s{i}"),
                        micros: rng.next_u64(),
                    })
                    .collect(),
            };
            let f = Frame::json(FrameType::Ready, 0, &ready).unwrap();
            if rng.below(2) == 0 {
                with_sync(&f).unwrap()
            } else {
                f.encode().unwrap()
            }
        }
        4 => Reply::Error(ErrorReply::new(ErrorKind::NotFound, "gone"))
            .to_frame(id)
            .unwrap()
            .encode()
            .unwrap(),
        5 => {
            let t = FrameType::ALL[rng.below(FrameType::ALL.len())];
            let payload = (0..rng.below(64)).map(|_| rng.next_u64() as u8).collect();
            Frame::new(t, id, payload).encode().unwrap()
        }
        _ => (0..rng.below(64)).map(|_| rng.next_u64() as u8).collect(),
    }
}

fn stream(seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut data = Vec::new();
    for _ in 0..rng.below(10) {
        data.extend(piece(&mut rng));
    }
    // Sometimes cut the last frame short, as a dying agent would.
    if rng.below(3) == 0 {
        data.truncate(data.len().saturating_sub(rng.below(8)));
    }
    data
}

#[test]
fn greeting_survives_random_agent_streams() {
    for seed in 1..=300 {
        greeting(&stream(seed));
    }
}

#[test]
fn owner_forwards_only_whole_frames_of_the_clients_request() {
    let mut delivered = 0;
    for seed in 1..=300 {
        delivered += mux_upstream(&stream(seed));
    }
    // The streams carry replies for the live request, so the forwarding path was exercised.
    assert!(delivered > 100, "only {delivered} frames delivered");
}

#[test]
fn committed_corpora_replay() {
    for data in corpus("greeting") {
        greeting(&data);
    }
    for data in corpus("mux") {
        mux_upstream(&data);
    }
}
