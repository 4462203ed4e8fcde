//! Micro-benchmarks of the pure hot path: applying publishes and session operations, placing
//! channels on shards, matching permission patterns, decoding and encoding client frames. Run
//! with `make bench-core` (criterion).

use chorus_core::collab::{ConflictPolicy, DocPath, OpKind};
use chorus_core::command::{CreateSessionCommand, SessionOpCommand};
use chorus_core::{
    ApplyContext, ChannelName, ChannelPattern, Command, PublishCommand, ShardState, shard_for,
};
use chorus_gateway::frame::{Encoding, decode_client_frame, encode_server_frame};
use chorus_proto::client::{ClientFrame, Publish, ServerFrame, client_frame, server_frame};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use prost::Message;
use std::hint::black_box;

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

criterion_group!(benches, apply, session_ops, placement, patterns, frames);
criterion_main!(benches);
