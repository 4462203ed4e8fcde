//! Fuzzes channel names and subscription patterns: parsing, matching and covering (what
//! decides who receives what and who may subscribe to what). The input is split at NUL bytes
//! into a pattern, a channel and a second pattern. Any panic is a bug, and so is a pattern
//! that covers another but does not match a channel the other matches.

#![no_main]

use chorus_core::{ChannelName, ChannelPattern};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let (pattern, channel, other) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let channel_ok = ChannelName::new(channel.to_string()).is_ok();
    let (Ok(pattern), Ok(other)) = (ChannelPattern::new(pattern), ChannelPattern::new(other)) else {
        return;
    };
    let matched = pattern.matches(channel);
    if pattern.covers(&other) && channel_ok && other.matches(channel) {
        assert!(matched, "{pattern:?} covers {other:?} but not {channel:?}");
    }
});
