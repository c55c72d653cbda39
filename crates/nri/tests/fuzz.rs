//! Randomized robustness: arbitrary bytes into the decoders, the stub and the simulator. The
//! only assertion is the important one: nothing panics, every session ends with a result.

use std::time::Duration;

use nri::mux::FrameDecoder;
use nri::simulator::{Runtime, SimConfig};
use nri::ttrpc::StreamDecoder;
use nri::{Event, EventMask, Plugin, Stub, StubConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A byte stream that is mostly well-framed, with random conn ids, ttrpc headers and bodies.
fn plausible_garbage(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(12) + 1 {
        let conn = match rng.below(6) {
            0 => 0,
            1 | 2 => 1,
            3 => 2,
            4 => rng.next() as u32,
            _ => 3,
        };
        let mut payload = Vec::new();
        if rng.below(2) == 0 {
            // ttrpc-looking header.
            let len = match rng.below(4) {
                0 => rng.below(64) as u32,
                1 => (4 << 20) + rng.below(1000) as u32,
                _ => rng.next() as u32,
            };
            payload.extend_from_slice(&len.to_be_bytes());
            payload.extend_from_slice(&(rng.below(20) as u32).to_be_bytes());
            payload.push(rng.below(5) as u8);
            payload.push(rng.below(8) as u8);
        }
        let n = rng.below(300) as usize;
        payload.extend(rng.bytes(n));
        let len = if rng.below(10) == 0 {
            rng.next() as u32
        } else {
            payload.len() as u32
        };
        out.extend_from_slice(&conn.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend(payload);
    }
    if rng.below(3) == 0 {
        let cut = rng.below(out.len() as u64) as usize;
        out.truncate(cut);
    }
    out
}

#[test]
fn decoders_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..2000 {
        let data = if rng.below(2) == 0 {
            plausible_garbage(&mut rng)
        } else {
            {
                let n = rng.below(2000) as usize;
                rng.bytes(n)
            }
        };
        let mut dec = FrameDecoder::default();
        let mut streams = [StreamDecoder::default(), StreamDecoder::default()];
        let mut i = 0;
        'outer: while i < data.len() {
            let step = (rng.below(97) as usize + 1).min(data.len() - i);
            dec.extend(&data[i..i + step]);
            i += step;
            loop {
                match dec.decode() {
                    Ok(Some(f)) => {
                        if let Some(s) = streams.get_mut(f.conn_id.wrapping_sub(1) as usize) {
                            s.push(&f.payload);
                            while s.next_message().is_some() {}
                        }
                    }
                    Ok(None) => break,
                    Err(_) => break 'outer,
                }
            }
        }
        let _ = dec.finish();
    }
}

struct Quiet;
impl Plugin for Quiet {
    fn events(&self) -> EventMask {
        EventMask::of(Event::CreateContainer)
    }
}

#[tokio::test]
async fn stub_survives_random_runtimes() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for round in 0..150 {
        let (mut rt, plugin) = UnixStream::pair().unwrap();
        let mut cfg = StubConfig::new("fuzz", "10").unwrap();
        cfg.reconnect = None;
        cfg.registration_timeout = Duration::from_millis(200);
        let task = tokio::spawn(async move { Stub::new(Quiet, cfg).serve(plugin).await });
        let data = plausible_garbage(&mut rng);
        let _ = rt.write_all(&data).await;
        drop(rt);
        let joined = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap_or_else(|_| panic!("round {round}: session did not end"));
        assert!(
            !joined.as_ref().is_err_and(|e| e.is_panic()),
            "round {round}: stub panicked"
        );
    }
}

#[tokio::test]
async fn simulator_survives_random_plugins() {
    let mut rng = Rng(0x0fed_cba9_8765_4321);
    let rt = Runtime::new(SimConfig {
        registration_timeout: Duration::from_millis(200),
        ..Default::default()
    });
    for round in 0..150 {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let rt2 = rt.clone();
        let task = tokio::spawn(async move { rt2.attach(ours).await });
        let data = plausible_garbage(&mut rng);
        let _ = theirs.write_all(&data).await;
        drop(theirs);
        let joined = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap_or_else(|_| panic!("round {round}: attach did not end"));
        assert!(
            !joined.as_ref().is_err_and(|e| e.is_panic()),
            "round {round}: simulator panicked"
        );
    }
}
