//! Micro-benchmarks of the pure hot path: applying publishes, placing channels on shards,
//! matching permission patterns. Run with `make bench-core` (criterion).

use chorus_core::{
    ApplyContext, ChannelName, ChannelPattern, Command, PublishCommand, ShardState, shard_for,
};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn publish(channel: &ChannelName, i: u64, key: bool) -> Command {
    Command::Publish(PublishCommand {
        channel: channel.clone(),
        event_type: Some("message".into()),
        data: format!("{{\"text\":\"message number {i} with some payload\"}}"),
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

criterion_group!(benches, apply, placement, patterns);
criterion_main!(benches);
