//! What a publish-rate check costs, allowed and refused. A refusal must stay as cheap as an
//! allowed check: a flood of refused publishes is exactly when it runs most.

use chorus_access::{KeyedLimits, Rate};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn checks(c: &mut Criterion) {
    let unlimited_enough = Rate {
        per_minute: u32::MAX,
        burst: u32::MAX,
    };
    let tight = Rate {
        per_minute: 1,
        burst: 1,
    };
    let limits = KeyedLimits::new([unlimited_enough, tight]);
    c.bench_function("publish_limit/allowed", |b| {
        b.iter(|| black_box(limits.check("publish", black_box(&"user-1"), unlimited_enough)))
    });
    let _ = limits.check("publish", &"user-2", tight); // empties the bucket
    c.bench_function("publish_limit/refused", |b| {
        b.iter(|| black_box(limits.check("publish", black_box(&"user-2"), tight)))
    });
}

criterion_group!(benches, checks);
criterion_main!(benches);
