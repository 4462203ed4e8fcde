//! Micro-benchmarks of the pure hot path: applying publishes and session operations, placing
//! channels on shards, matching permission patterns and pattern subscriptions, decoding and encoding client frames,
//! copying and encoding a shard's state for a snapshot. Run
//! with `make bench-core` (criterion).

use chorus_core::collab::{ConflictPolicy, DocPath, OpKind};
use chorus_core::command::{CreateSessionCommand, SessionOpCommand};
use chorus_core::{
    ApplyContext, ChannelName, ChannelPattern, Command, PatternIndex, PublishCommand, ShardState, shard_for,
};
use chorus_gateway::frame::{Encoding, decode_client_frame, encode_server_frame};
use chorus_proto::client::{ClientFrame, Publish, ServerFrame, client_frame, server_frame};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use prost::Message;
use std::hint::black_box;

/// The allocator the node runs with: buffer growth costs differ between allocators.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn publish(channel: &ChannelName, i: u64, key: bool) -> Command {
    Command::Publish(PublishCommand {
        channel: channel.clone(),
        event_type: Some("message".into()),
        data: format!("{{\"text\":\"message number {i} with some payload\"}}").into(),
        publisher: "user-42".into(),
        idempotency_key: key.then(|| format!("key-{i}")),
        time_ms: 1_800_000_000_000 + i,
    })
}

fn apply(c: &mut Criterion) {
    let channels: Vec<ChannelName> = (0..64)
        .map(|i| ChannelName::new(format!("chat.room-{i}")).unwrap())
        .collect();
    let commands: Vec<Command> = (0..1024u64)
        .map(|i| publish(&channels[(i % 64) as usize], i, i % 2 == 0))
        .collect();
    c.bench_function(
        "apply 1024 publishes (64 channels, half with idempotency keys)",
        |b| {
            b.iter_batched(
                ShardState::default,
                |mut state| {
                    for (i, command) in commands.iter().enumerate() {
                        black_box(state.apply(
                            ApplyContext {
                                log_index: i as u64 + 1,
                            },
                            command,
                        ));
                    }
                    state
                },
                BatchSize::SmallInput,
            )
        },
    );
}

/// What a snapshot costs per shard: the copy taken under the state lock, the encoding, and
/// the decoding at install (100,000 messages of 128 B over 8 channels, kept whole).
fn snapshot(c: &mut Criterion) {
    let channels: Vec<ChannelName> = (0..8)
        .map(|i| ChannelName::new(format!("bench.ch-{i}")).unwrap())
        .collect();
    let data: std::sync::Arc<str> = format!("\"{}\"", "x".repeat(126)).into();
    let mut state = ShardState::new(chorus_core::HistoryLimits {
        max_entries: u64::MAX,
        max_age_ms: u64::MAX,
        dedupe_window_ms: 60_000,
    });
    for i in 0..100_000u64 {
        let command = Command::Publish(PublishCommand {
            channel: channels[(i % 8) as usize].clone(),
            event_type: None,
            data: data.clone(),
            publisher: "bench".into(),
            idempotency_key: None,
            time_ms: 1_800_000_000_000 + i,
        });
        state.apply(ApplyContext { log_index: i + 1 }, &command);
    }
    let encoded = postcard::to_stdvec(&state).unwrap();
    let mut group = c.benchmark_group("snapshot of 100,000 messages (128 B)");
    group.sample_size(10);
    group.bench_function("clone", |b| b.iter(|| black_box(state.clone())));
    group.bench_function("encode into a growing buffer", |b| {
        b.iter(|| black_box(postcard::to_stdvec(&state).unwrap()))
    });
    group.bench_function("encode into a buffer of its size", |b| {
        b.iter(|| black_box(chorus_store::state_machine::encode_state(&state)))
    });
    group.bench_function("decode", |b| {
        b.iter(|| black_box(postcard::from_bytes::<ShardState>(&encoded).unwrap()))
    });
    group.finish();
}

fn placement(c: &mut Criterion) {
    let names: Vec<String> = (0..1024).map(|i| format!("user.{i}.notifications")).collect();
    c.bench_function("shard_for 1024 channel names", |b| {
        b.iter(|| names.iter().map(|n| shard_for(black_box(n), 12).0).sum::<u32>())
    });
}

fn patterns(c: &mut Criterion) {
    let patterns: Vec<ChannelPattern> = ["chat.>", "user.*.notifications", "news.*", "presence.*.status"]
        .into_iter()
        .map(|p| ChannelPattern::new(p).unwrap())
        .collect();
    let names: Vec<String> = (0..1024).map(|i| format!("user.{i}.notifications")).collect();
    c.bench_function("match 1024 channels against 4 patterns", |b| {
        b.iter(|| {
            names
                .iter()
                .filter(|n| patterns.iter().any(|p| p.matches(black_box(n))))
                .count()
        })
    });
}

/// The hub's question for every event: which of N pattern subscriptions match its channel.
/// The index (a token trie) against asking each pattern in turn, as the hub did before.
fn pattern_subscriptions(c: &mut Criterion) {
    let mut group = c.benchmark_group("pattern subscriptions matching one event");
    for count in [10u32, 1_000, 100_000] {
        // Three shapes, each with its own literal: `chat.7.*`, `user.8.>`, `*.9.typing`.
        let patterns: Vec<ChannelPattern> = (0..count)
            .map(|i| match i % 3 {
                0 => format!("chat.{i}.*"),
                1 => format!("user.{i}.>"),
                _ => format!("*.{i}.typing"),
            })
            .map(|p| ChannelPattern::new(p).unwrap())
            .collect();
        let mut index = PatternIndex::new();
        for (key, pattern) in patterns.iter().enumerate() {
            index.insert(pattern, key);
        }
        // Matched by `chat.3.*` (when present) and nothing else.
        let channel = "chat.3.message";
        let mut out = Vec::new();
        group.bench_function(format!("index, {count} patterns"), |b| {
            b.iter(|| {
                out.clear();
                index.matching(black_box(channel), &mut out);
                out.len()
            })
        });
        group.bench_function(format!("each pattern in turn, {count} patterns"), |b| {
            b.iter(|| patterns.iter().filter(|p| p.matches(black_box(channel))).count())
        });
    }
    group.finish();
}

fn session_ops(c: &mut Criterion) {
    let channel = ChannelName::new("doc.bench").unwrap();
    let create = Command::CreateSession(CreateSessionCommand {
        channel: channel.clone(),
        policy: ConflictPolicy::Reject,
        document: serde_json::json!({"n": 0, "title": "", "items": []}),
        creator: "user-42".into(),
        time_ms: 1,
    });
    let ops: Vec<Command> = (0..1024u64)
        .map(|i| {
            let (path, kind) = match i % 3 {
                0 => ("/n", OpKind::Increment(serde_json::json!(1))),
                1 => ("/title", OpKind::Set(serde_json::json!(format!("title {i}")))),
                _ => ("/items/-", OpKind::Set(serde_json::json!({"i": i}))),
            };
            Command::SessionOp(SessionOpCommand {
                channel: channel.clone(),
                path: DocPath::parse(path).unwrap(),
                kind,
                base_version: i,
                author: "user-42".into(),
                time_ms: 2 + i,
            })
        })
        .collect();
    c.bench_function(
        "apply 1024 session operations (increment, set, list append)",
        |b| {
            b.iter_batched(
                || {
                    let mut state = ShardState::default();
                    state.apply(ApplyContext { log_index: 1 }, &create);
                    state
                },
                |mut state| {
                    for (i, op) in ops.iter().enumerate() {
                        black_box(state.apply(
                            ApplyContext {
                                log_index: i as u64 + 2,
                            },
                            op,
                        ));
                    }
                    state
                },
                BatchSize::SmallInput,
            )
        },
    );
}

fn frames(c: &mut Criterion) {
    let publishes: Vec<Vec<u8>> = (0..1024)
        .map(|i| {
            ClientFrame {
                id: i,
                kind: Some(client_frame::Kind::Publish(Publish {
                    channel: format!("chat.room-{}", i % 64),
                    data: format!("{{\"text\":\"{}\"}}", "x".repeat(110)),
                    event_type: "message".into(),
                    idempotency_key: format!("key-{i}"),
                })),
            }
            .encode_to_vec()
        })
        .collect();
    c.bench_function("decode 1024 publish frames (protobuf, 128 B data)", |b| {
        b.iter(|| {
            publishes
                .iter()
                .map(|bytes| {
                    decode_client_frame(black_box(bytes), Encoding::Protobuf, 1 << 20)
                        .unwrap()
                        .id
                })
                .sum::<u64>()
        })
    });
    let events: Vec<ServerFrame> = (0..1024u64)
        .map(|i| ServerFrame {
            id: 0,
            kind: Some(server_frame::Kind::Event(chorus_proto::client::Event {
                sub: 1,
                channel: format!("chat.room-{}", i % 64),
                epoch: 7,
                offset: i + 1,
                event_type: "message".into(),
                data: format!("{{\"text\":\"{}\"}}", "x".repeat(110)),
                publisher: "user-42".into(),
                time_ms: 1_800_000_000_000 + i,
                data_deflate: Vec::new(),
            })),
        })
        .collect();
    for (name, encoding) in [("protobuf", Encoding::Protobuf), ("JSON", Encoding::Json)] {
        c.bench_function(&format!("encode 1024 event frames ({name}, 128 B data)"), |b| {
            b.iter(|| {
                events
                    .iter()
                    .map(|frame| encode_server_frame(black_box(frame), encoding).len())
                    .sum::<usize>()
            })
        });
    }
}

criterion_group!(
    benches,
    apply,
    snapshot,
    session_ops,
    placement,
    patterns,
    pattern_subscriptions,
    frames
);
criterion_main!(benches);
