//! Rate-limited logging: at most [`PER_WINDOW`] lines per call site per [`WINDOW`]; what is
//! held back is counted and reported once per window, per call site, as one line.
//!
//! A peer that stays unreachable makes every shard's replication and election retry and log
//! each failure: about 27,000 warnings were seen from one unreachable voter. The log must say
//! what is wrong, not fill the disk or drown everything else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::callsite::Identifier;
use tracing::{Event, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// Lines one call site may write per window.
pub const PER_WINDOW: u32 = 20;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(10);

struct Site {
    window_start: Instant,
    written: u32,
    held_back: u64,
    metadata: &'static Metadata<'static>,
}

/// The per-call-site limit, as a filter of the log's output layer. Cloning shares it.
#[derive(Clone, Default)]
pub struct RepeatLimit {
    sites: Arc<Mutex<HashMap<Identifier, Site>>>,
}

impl RepeatLimit {
    /// Lines held back since the last call, per call site: (file:line or name, level, count).
    pub fn take_held_back(&self) -> Vec<(String, tracing::Level, u64)> {
        let mut sites = self.sites.lock().expect("log limit lock");
        let now = Instant::now();
        // Forget call sites quiet for a whole window: the map stays as small as what is
        // logging now.
        sites.retain(|_, site| site.held_back > 0 || now.duration_since(site.window_start) < WINDOW);
        sites
            .values_mut()
            .filter(|site| site.held_back > 0)
            .map(|site| {
                let held_back = std::mem::take(&mut site.held_back);
                let metadata = site.metadata;
                let place = match (metadata.file(), metadata.line()) {
                    (Some(file), Some(line)) => format!("{file}:{line}"),
                    _ => metadata.name().to_string(),
                };
                (place, *metadata.level(), held_back)
            })
            .collect()
    }

    /// Reports what was held back, every window, until the process ends.
    pub fn report_every_window(self) {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(WINDOW);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                for (place, level, count) in self.take_held_back() {
                    tracing::warn!(
                        held_back = count,
                        %level,
                        at = %place,
                        "repeated log lines held back (at most {PER_WINDOW} per {}s from one place)",
                        WINDOW.as_secs()
                    );
                }
            }
        });
    }
}

impl<S> Filter<S> for RepeatLimit {
    fn enabled(&self, _metadata: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        let metadata = event.metadata();
        let now = Instant::now();
        let mut sites = self.sites.lock().expect("log limit lock");
        let site = sites.entry(metadata.callsite()).or_insert(Site {
            window_start: now,
            written: 0,
            held_back: 0,
            metadata,
        });
        if now.duration_since(site.window_start) >= WINDOW {
            site.window_start = now;
            site.written = 0;
        }
        if site.written < PER_WINDOW {
            site.written += 1;
            true
        } else {
            site.held_back += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_flood_from_one_place_is_held_back_and_counted_while_other_places_still_log() {
        use tracing_subscriber::Layer;
        let out = Captured::default();
        let limit = RepeatLimit::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .with_filter(limit.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..1_000 {
                tracing::warn!(attempt = i, "peer unreachable");
            }
            tracing::info!("something else");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("peer unreachable").count(), PER_WINDOW as usize);
        assert!(text.contains("something else"));
        let held = limit.take_held_back();
        assert_eq!(held.len(), 1, "{held:?}");
        assert_eq!(held[0].2, 1_000 - u64::from(PER_WINDOW));
        assert!(held[0].0.contains("log_limit.rs"), "{held:?}");
        assert!(limit.take_held_back().is_empty(), "reported once");
    }
}
