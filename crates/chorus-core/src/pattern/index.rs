//! Which pattern subscriptions match a channel, without looking at every one of them.
//!
//! A token trie (the idea of NATS's sublist): patterns are stored along their tokens, and a
//! channel walks down its own tokens, following at each level the child for the literal token
//! and the one for `*`, and collecting the patterns whose `>` stands there. The cost of a match
//! grows with the channel's length and the number of patterns it matches, not with how many
//! patterns are stored.
//!
//! ```text
//!  chat.*       root ─ "chat" ─ * ─ [ends: a]            "chat.1"   -> a, c
//!  chat.1.>                    └ "1" ─ [tail: b]          "chat.1.x" -> b, c
//!  >            [tail: c]                                 "news"     -> c
//! ```

use super::{ChannelPattern, Token};
use std::collections::HashMap;

type Children<K> = HashMap<Box<str>, Node<K>, foldhash::fast::RandomState>;

/// Keys (subscriptions) stored under their patterns.
#[derive(Debug)]
pub struct PatternIndex<K> {
    root: Node<K>,
    len: usize,
}

#[derive(Debug)]
struct Node<K> {
    literal: Children<K>,
    one: Option<Box<Node<K>>>,
    /// Patterns that end at this node.
    ends: Vec<K>,
    /// Patterns whose last token, `>`, follows this node: one or more further tokens.
    tail: Vec<K>,
}

impl<K> Default for Node<K> {
    fn default() -> Self {
        Node {
            literal: Children::default(),
            one: None,
            ends: Vec::new(),
            tail: Vec::new(),
        }
    }
}

impl<K> Node<K> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.one.is_none() && self.ends.is_empty() && self.tail.is_empty()
    }
}

impl<K> Default for PatternIndex<K> {
    fn default() -> Self {
        PatternIndex {
            root: Node::default(),
            len: 0,
        }
    }
}

/// A `{sub}` token (role patterns only) is stored as this literal, which no channel token can
/// equal (braces are not token characters): it matches nothing, as in
/// [`ChannelPattern::matches`].
const SUBJECT: &str = "{sub}";

impl<K: Copy + PartialEq> PatternIndex<K> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many keys are stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `key` under `pattern` (a key stored twice is returned twice by [`Self::matching`]).
    pub fn insert(&mut self, pattern: &ChannelPattern, key: K) {
        let mut node = &mut self.root;
        for token in &pattern.tokens {
            node = match token {
                Token::Tail => {
                    node.tail.push(key);
                    self.len += 1;
                    return;
                }
                Token::One => node.one.get_or_insert_with(Box::default),
                Token::Literal(literal) => node.literal.entry(literal.as_str().into()).or_default(),
                Token::Subject => node.literal.entry(SUBJECT.into()).or_default(),
            };
        }
        node.ends.push(key);
        self.len += 1;
    }

    /// Removes `key` from under `pattern`; false when it was not there. Nodes left empty go.
    pub fn remove(&mut self, pattern: &ChannelPattern, key: K) -> bool {
        let removed = Self::remove_below(&mut self.root, &pattern.tokens, key);
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn remove_below(node: &mut Node<K>, tokens: &[Token], key: K) -> bool {
        let take = |keys: &mut Vec<K>| match keys.iter().position(|k| *k == key) {
            Some(i) => {
                keys.swap_remove(i);
                true
            }
            None => false,
        };
        let Some((token, rest)) = tokens.split_first() else {
            return take(&mut node.ends);
        };
        match token {
            Token::Tail => take(&mut node.tail),
            Token::One => {
                let Some(child) = node.one.as_deref_mut() else {
                    return false;
                };
                let removed = Self::remove_below(child, rest, key);
                if child.is_empty() {
                    node.one = None;
                }
                removed
            }
            Token::Literal(_) | Token::Subject => {
                let literal = match token {
                    Token::Literal(literal) => literal.as_str(),
                    _ => SUBJECT,
                };
                let Some(child) = node.literal.get_mut(literal) else {
                    return false;
                };
                let removed = Self::remove_below(child, rest, key);
                if child.is_empty() {
                    node.literal.remove(literal);
                }
                removed
            }
        }
    }

    /// Appends to `out` the key of every pattern that matches `channel`, each once per insert.
    pub fn matching(&self, channel: &str, out: &mut Vec<K>) {
        let tokens: Vec<&str> = channel.split('.').collect();
        Self::collect(&self.root, &tokens, out);
    }

    fn collect(node: &Node<K>, tokens: &[&str], out: &mut Vec<K>) {
        let Some((first, rest)) = tokens.split_first() else {
            out.extend_from_slice(&node.ends);
            return;
        };
        out.extend_from_slice(&node.tail);
        if let Some(child) = node.literal.get(*first) {
            Self::collect(child, rest, out);
        }
        if let Some(child) = &node.one {
            Self::collect(child, rest, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ChannelPattern {
        ChannelPattern::new(s).unwrap()
    }

    fn matching(index: &PatternIndex<u32>, channel: &str) -> Vec<u32> {
        let mut out = Vec::new();
        index.matching(channel, &mut out);
        out.sort_unstable();
        out
    }

    const PATTERNS: [&str; 9] = [
        "chat.*", "chat.>", ">", "chat.1", "a.*.c", "*.*", "*", "chat.1.>", "x.*.>",
    ];
    const CHANNELS: [&str; 10] = [
        "chat",
        "chat.1",
        "chat.1.x",
        "chat.2.x.y",
        "a.b.c",
        "a.b.d",
        "x.y",
        "x.y.z",
        "news",
        "a.b",
    ];

    #[test]
    fn matches_what_each_pattern_matches_by_itself() {
        let mut index = PatternIndex::new();
        for (key, pattern) in PATTERNS.iter().enumerate() {
            index.insert(&p(pattern), key as u32);
        }
        assert_eq!(index.len(), PATTERNS.len());
        for channel in CHANNELS {
            let expected: Vec<u32> = (0..PATTERNS.len() as u32)
                .filter(|k| p(PATTERNS[*k as usize]).matches(channel))
                .collect();
            assert_eq!(matching(&index, channel), expected, "channel {channel}");
        }
        assert_eq!(matching(&index, "chat.1"), vec![0, 1, 2, 3, 5]);
    }

    /// Every pattern of up to 3 tokens over `a`, `b`, `*`, `>` against every channel of up
    /// to 4 tokens over `a`, `b`, `c`: the index agrees with the patterns one by one.
    #[test]
    fn agrees_with_every_small_pattern_on_every_small_channel() {
        fn words(alphabet: &[&str], max: usize) -> Vec<String> {
            let mut all: Vec<String> = alphabet.iter().map(|t| t.to_string()).collect();
            let mut last = all.clone();
            for _ in 1..max {
                last = last
                    .iter()
                    .flat_map(|w| alphabet.iter().map(move |t| format!("{w}.{t}")))
                    .collect();
                all.extend(last.iter().cloned());
            }
            all
        }
        let patterns: Vec<ChannelPattern> = words(&["a", "b", "*", ">"], 3)
            .into_iter()
            .filter_map(|w| ChannelPattern::new(w).ok())
            .collect();
        let mut index = PatternIndex::new();
        for (key, pattern) in patterns.iter().enumerate() {
            index.insert(pattern, key as u32);
        }
        for channel in words(&["a", "b", "c"], 4) {
            let expected: Vec<u32> = (0..patterns.len() as u32)
                .filter(|k| patterns[*k as usize].matches(&channel))
                .collect();
            assert_eq!(matching(&index, &channel), expected, "channel {channel}");
        }
        for (key, pattern) in patterns.iter().enumerate() {
            assert!(index.remove(pattern, key as u32));
        }
        assert!(index.is_empty() && index.root.is_empty());
    }

    #[test]
    fn removed_keys_stop_matching_and_empty_branches_go() {
        let mut index = PatternIndex::new();
        index.insert(&p("chat.*"), 1);
        index.insert(&p("chat.*"), 2);
        index.insert(&p("chat.1.>"), 3);
        assert!(index.remove(&p("chat.*"), 1));
        assert!(!index.remove(&p("chat.*"), 1), "already gone");
        assert!(!index.remove(&p("chat.>"), 2), "stored under another pattern");
        assert_eq!(matching(&index, "chat.1"), vec![2]);
        assert!(index.remove(&p("chat.*"), 2));
        assert!(index.remove(&p("chat.1.>"), 3));
        assert!(index.is_empty());
        assert!(index.root.is_empty(), "no empty node is left behind");
        assert!(matching(&index, "chat.1").is_empty());
    }

    #[test]
    fn a_subject_token_matches_nothing() {
        let mut index = PatternIndex::new();
        index.insert(&ChannelPattern::for_roles("user.{sub}.>").unwrap(), 7);
        assert!(matching(&index, "user.alice.inbox").is_empty());
        assert!(index.remove(&ChannelPattern::for_roles("user.{sub}.>").unwrap(), 7));
    }
}
