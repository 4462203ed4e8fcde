//! Typing indicators: who is typing in which channel, with a time to live. Not replicated:
//! every node keeps its own registry, fed by its own clients and by its peers' broadcasts.
//!
//! ```text
//!  started(channel, user, device) ─► entry expires ttl after the last "started"
//!  stopped / connection closed / origin node silent / ttl passed ─► entry removed
//! ```
//!
//! Times are milliseconds on a monotonic clock that the caller passes in, so the rules are
//! tested without waiting.

use crate::channel::ChannelName;
use std::collections::{BTreeMap, HashMap};

/// Who is typing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Typist {
    /// The user (token subject).
    pub user: String,
    /// Their device (the gateway names it `default` when the token names none).
    pub device: String,
}

#[derive(Debug, Clone)]
struct Entry {
    origin: u64,
    conn: u64,
    expires_ms: u64,
}

/// A typing change that subscribers of the channel are told about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypingChange {
    /// The channel.
    pub channel: ChannelName,
    /// Who.
    pub typist: Typist,
    /// True: started; false: stopped.
    pub typing: bool,
}

/// The typists of every channel, as this node knows them.
#[derive(Debug, Default)]
pub struct TypingRegistry {
    channels: HashMap<ChannelName, BTreeMap<Typist, Entry>>,
}

impl TypingRegistry {
    /// Records a "started" from connection `conn` on node `origin`. Returns the change to
    /// announce (`None` when the typist was already typing: only the expiry moves).
    pub fn start(
        &mut self,
        channel: &ChannelName,
        typist: Typist,
        origin: u64,
        conn: u64,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Option<TypingChange> {
        let entry = Entry {
            origin,
            conn,
            expires_ms: now_ms.saturating_add(ttl_ms),
        };
        let typists = self.channels.entry(channel.clone()).or_default();
        typists
            .insert(typist.clone(), entry)
            .is_none()
            .then(|| TypingChange {
                channel: channel.clone(),
                typist,
                typing: true,
            })
    }

    /// Records a "stopped" sent through node `origin`. Returns the change (`None` when the
    /// typist was not typing, or is typing through another node by now).
    pub fn stop(&mut self, channel: &ChannelName, typist: &Typist, origin: u64) -> Option<TypingChange> {
        let typists = self.channels.get_mut(channel)?;
        if typists.get(typist)?.origin != origin {
            return None;
        }
        typists.remove(typist)?;
        if typists.is_empty() {
            self.channels.remove(channel);
        }
        Some(TypingChange {
            channel: channel.clone(),
            typist: typist.clone(),
            typing: false,
        })
    }

    /// Removes what matches `gone`, returning the stops to announce.
    fn remove_where(&mut self, mut gone: impl FnMut(&Entry) -> bool) -> Vec<TypingChange> {
        let mut changes = Vec::new();
        self.channels.retain(|channel, typists| {
            typists.retain(|typist, entry| {
                let remove = gone(entry);
                if remove {
                    changes.push(TypingChange {
                        channel: channel.clone(),
                        typist: typist.clone(),
                        typing: false,
                    });
                }
                !remove
            });
            !typists.is_empty()
        });
        changes
    }

    /// Typists whose last "started" is older than their time to live.
    pub fn expire(&mut self, now_ms: u64) -> Vec<TypingChange> {
        self.remove_where(|e| e.expires_ms <= now_ms)
    }

    /// Typists of a closed connection.
    pub fn drop_connection(&mut self, origin: u64, conn: u64) -> Vec<TypingChange> {
        self.remove_where(|e| e.origin == origin && e.conn == conn)
    }

    /// Typists whose node stopped answering.
    pub fn drop_origin(&mut self, origin: u64) -> Vec<TypingChange> {
        self.remove_where(|e| e.origin == origin)
    }

    /// Whether any typist came from `origin`.
    pub fn has_origin(&self, origin: u64) -> bool {
        self.channels
            .values()
            .any(|typists| typists.values().any(|e| e.origin == origin))
    }

    /// The channel's typists, sorted.
    pub fn current(&self, channel: &ChannelName) -> Vec<Typist> {
        self.channels
            .get(channel)
            .map(|typists| typists.keys().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(name: &str) -> ChannelName {
        ChannelName::new(name).unwrap()
    }

    fn who(user: &str) -> Typist {
        Typist {
            user: user.into(),
            device: "d".into(),
        }
    }

    #[test]
    fn start_announces_once_and_renews_silently() {
        let mut r = TypingRegistry::default();
        assert!(r.start(&ch("c"), who("a"), 1, 7, 0, 6_000).unwrap().typing);
        assert_eq!(r.start(&ch("c"), who("a"), 1, 7, 3_000, 6_000), None);
        assert!(r.expire(8_999).is_empty(), "renewed at 3 s: lives until 9 s");
        let stops = r.expire(9_000);
        assert_eq!(stops.len(), 1);
        assert!(!stops[0].typing);
        assert!(r.current(&ch("c")).is_empty());
    }

    #[test]
    fn stop_connection_and_origin_remove_their_typists_only() {
        let mut r = TypingRegistry::default();
        r.start(&ch("c"), who("a"), 1, 7, 0, 6_000);
        r.start(&ch("c"), who("b"), 1, 8, 0, 6_000);
        r.start(&ch("d"), who("c"), 2, 7, 0, 6_000);
        r.start(&ch("d"), who("e"), 3, 1, 0, 6_000);
        assert_eq!(r.current(&ch("c")), vec![who("a"), who("b")]);
        assert_eq!(
            r.stop(&ch("c"), &who("b"), 2),
            None,
            "typing through node 1, not 2"
        );
        assert_eq!(r.stop(&ch("c"), &who("a"), 1).map(|c| c.typing), Some(false));
        assert_eq!(r.stop(&ch("c"), &who("a"), 1), None);
        assert_eq!(r.drop_connection(1, 8).len(), 1);
        assert!(r.has_origin(2));
        let gone = r.drop_origin(2);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].typist, who("c"));
        assert!(!r.has_origin(2));
        assert_eq!(r.current(&ch("d")), vec![who("e")]);
    }
}
