//! Collaborative sessions: a JSON document per session channel, changed by operations in one
//! total order (the shard's log), with a version per applied operation.
//!
//! ```text
//!  client op {path, kind, base_version} ─► shard leader orders it ─► every replica:
//!      overlapping path changed after base_version?
//!          no            ─► apply, version += 1
//!          yes, lww      ─► apply, version += 1, report what it overwrote
//!          yes, reject   ─► refuse with the current value and version (client rebases)
//! ```
//!
//! Paths are JSON Pointers (RFC 6901): `/title`, `/items/0/done`. Two paths overlap when one
//! is a prefix of the other (`/a` and `/a/b`). `increment` and `append` commute, so they
//! never conflict; `set` and `delete` do. Every check happens before the document changes,
//! so a refused or invalid operation leaves it exactly as it was.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::VecDeque;
use std::fmt;

/// Longest accepted path, bytes.
pub const MAX_PATH_LEN: usize = 1024;
/// Deepest accepted path, tokens.
pub const MAX_PATH_DEPTH: usize = 32;
/// Largest document, bytes of JSON text (tracked per operation).
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Deepest value an operation may put, and deepest initial document, in nesting levels. With
/// paths of at most [`MAX_PATH_DEPTH`] levels a document stays under 100 levels, within what
/// JSON readers accept (serde_json: 128), so every snapshot and event stays readable.
pub const MAX_VALUE_DEPTH: usize = 64;
/// How many recent changes a session remembers for conflict checks. An operation based on a
/// version older than these is treated as conflicting with everything (reject) or reported
/// as overwriting (lww).
pub const CONFLICT_WINDOW: usize = 4096;

/// How a session resolves an operation based on an outdated version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// Apply it; the later operation in the log wins, and the reply says what it overwrote.
    Lww,
    /// Refuse it with the current value and version, so the client can rebase.
    Reject,
}

impl ConflictPolicy {
    /// The policy's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictPolicy::Lww => "lww",
            ConflictPolicy::Reject => "reject",
        }
    }

    /// Parses `lww` or `reject`.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "lww" => Ok(ConflictPolicy::Lww),
            "reject" => Ok(ConflictPolicy::Reject),
            other => Err(format!("policy must be \"lww\" or \"reject\", not {other:?}")),
        }
    }
}

impl OpError {
    /// The stable error code of the failure.
    pub fn code(&self) -> crate::ErrorCode {
        match self {
            OpError::NotFound { .. } | OpError::NoSession { .. } => crate::ErrorCode::NotFound,
            OpError::WrongType { .. } | OpError::Invalid(_) => crate::ErrorCode::BadRequest,
            OpError::TooLarge { .. } => crate::ErrorCode::PayloadTooLarge,
            OpError::Exists { .. } | OpError::Conflict { .. } => crate::ErrorCode::Conflict,
        }
    }
}

/// A parsed JSON Pointer with at least one token.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DocPath(Vec<String>);

impl DocPath {
    /// Parses a JSON Pointer such as `/items/0/title` (`~1` is `/`, `~0` is `~`).
    pub fn parse(text: &str) -> Result<DocPath, String> {
        if text.len() > MAX_PATH_LEN {
            return Err(format!(
                "path is {} bytes; the limit is {MAX_PATH_LEN}",
                text.len()
            ));
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "path {text:?} must be a JSON Pointer starting with '/', such as \"/title\""
            ));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                match (c, c == '~') {
                    (_, true) => match chars.next() {
                        Some('0') => token.push('~'),
                        Some('1') => token.push('/'),
                        _ => return Err(format!("path {text:?} has a '~' not followed by 0 or 1")),
                    },
                    (c, false) => token.push(c),
                }
            }
            tokens.push(token);
        }
        if tokens.len() > MAX_PATH_DEPTH {
            return Err(format!("path {text:?} is deeper than {MAX_PATH_DEPTH} levels"));
        }
        Ok(DocPath(tokens))
    }

    /// Whether one of the two paths is a prefix of the other.
    pub fn overlaps(&self, other: &DocPath) -> bool {
        self.0.iter().zip(&other.0).all(|(a, b)| a == b)
    }

    /// The path an operation changes, for conflict checks: inserting into or removing from a
    /// list shifts the later elements, so that changes the whole list.
    fn changed_entry(&self, in_list: bool, inserted_or_removed: bool) -> DocPath {
        if in_list && inserted_or_removed {
            DocPath(self.0[..self.0.len() - 1].to_vec())
        } else {
            self.clone()
        }
    }

    fn parent_and_last(&self) -> (&[String], &str) {
        let (last, parent) = self.0.split_last().expect("a path has at least one token");
        (parent, last)
    }
}

impl TryFrom<String> for DocPath {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        DocPath::parse(&text)
    }
}

impl From<DocPath> for String {
    fn from(path: DocPath) -> String {
        path.to_string()
    }
}

impl fmt::Display for DocPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for token in &self.0 {
            write!(f, "/{}", token.replace('~', "~0").replace('/', "~1"))?;
        }
        Ok(())
    }
}

/// What an operation does at its path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpKind {
    /// Put a value (missing parent objects are created).
    Set(#[serde(with = "json_text")] Value),
    /// Remove the value (it must exist).
    Delete,
    /// Add a number to the number there (a missing value counts as 0).
    Increment(#[serde(with = "json_text")] Value),
    /// Push a value onto the list there (a missing value counts as `[]`).
    Append(#[serde(with = "json_text")] Value),
}

impl OpKind {
    /// The operation's wire name.
    pub fn name(&self) -> &'static str {
        match self {
            OpKind::Set(_) => "set",
            OpKind::Delete => "delete",
            OpKind::Increment(_) => "increment",
            OpKind::Append(_) => "append",
        }
    }

    /// Builds an operation from its wire name and (for all but delete) its JSON value.
    pub fn parse(name: &str, value: Option<Value>) -> Result<OpKind, String> {
        match (name, value) {
            ("delete", _) => Ok(OpKind::Delete),
            ("set", Some(v)) => Ok(OpKind::Set(v)),
            ("increment", Some(v)) if v.is_number() => Ok(OpKind::Increment(v)),
            ("increment", Some(v)) => Err(format!("increment needs a number, not {v}")),
            ("append", Some(v)) => Ok(OpKind::Append(v)),
            ("set" | "increment" | "append", None) => Err(format!("{name} needs a value")),
            (other, _) => Err(format!(
                "op must be one of set, delete, increment, append, not {other:?}"
            )),
        }
    }

    /// The value the operation carries (`None` for delete).
    pub fn value(&self) -> Option<&Value> {
        match self {
            OpKind::Set(v) | OpKind::Increment(v) | OpKind::Append(v) => Some(v),
            OpKind::Delete => None,
        }
    }

    fn commutes(&self) -> bool {
        matches!(self, OpKind::Increment(_) | OpKind::Append(_))
    }
}

/// Parses an operation as clients send it: its name, a JSON Pointer, and its value (not for
/// delete). The message names the bad part.
pub fn parse_op(op: &str, path: &str, value: Option<Value>) -> Result<(DocPath, OpKind), String> {
    let path = DocPath::parse(path)?;
    let kind = OpKind::parse(op, value)?;
    Ok((path, kind))
}

/// Why an operation was not applied. The document is unchanged in every case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum OpError {
    /// Nothing at the path (delete), or a parent that does not exist in a list.
    #[error("no value at {path}")]
    NotFound {
        /// The path.
        path: String,
    },
    /// The value at (or above) the path has the wrong type for the operation.
    #[error("{path} holds {found}, {op} needs {needed}")]
    WrongType {
        /// Where.
        path: String,
        /// The operation.
        op: String,
        /// What it needs there.
        needed: String,
        /// What is there.
        found: String,
    },
    /// Anything else wrong with the operation (bad index, overflow, base version ahead).
    #[error("{0}")]
    Invalid(String),
    /// The document would grow beyond [`MAX_DOCUMENT_BYTES`].
    #[error("the document would be about {bytes} bytes; the limit is {MAX_DOCUMENT_BYTES}")]
    TooLarge {
        /// Its size after the operation.
        bytes: usize,
    },
    /// No session on that channel.
    #[error("no session {session}; create it first")]
    NoSession {
        /// The session's channel.
        session: String,
    },
    /// A session already exists on that channel.
    #[error("session {session} exists already")]
    Exists {
        /// The session's channel.
        session: String,
    },
    /// `reject` policy: the path changed after the operation's base version.
    #[error("{path} changed after version {base_version}; the session is at version {version}")]
    Conflict {
        /// The operation's path.
        path: String,
        /// The version the operation was based on.
        base_version: u64,
        /// The session's current version.
        version: u64,
        /// The current value at the path (`None`: nothing there).
        #[serde(with = "opt_json_text")]
        current: Option<Value>,
    },
}

/// What an applied operation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpApplied {
    /// The session's version after it.
    pub version: u64,
    /// The value it replaced or removed (`None`: nothing was there).
    #[serde(with = "opt_json_text")]
    pub previous: Option<Value>,
    /// `lww`: the path had changed after the operation's base version, and this operation
    /// overwrote that change.
    pub overwrote_newer: bool,
}

/// One session's document and the recent changes used for conflict checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDoc {
    policy: ConflictPolicy,
    #[serde(with = "json_text")]
    document: Value,
    version: u64,
    /// Approximate size of the document's JSON text.
    bytes: usize,
    /// (version, path) of the latest changes, oldest first, at most [`CONFLICT_WINDOW`].
    recent: VecDeque<(u64, DocPath)>,
}

impl SessionDoc {
    /// A new session at version 0. The document must be a JSON object.
    pub fn new(policy: ConflictPolicy, document: Value) -> Result<SessionDoc, OpError> {
        if !document.is_object() {
            return Err(OpError::Invalid(format!(
                "a session document must be a JSON object, not {}",
                type_name(&document)
            )));
        }
        if value_depth(&document) > MAX_VALUE_DEPTH {
            return Err(OpError::Invalid(format!(
                "the document is nested deeper than {MAX_VALUE_DEPTH} levels"
            )));
        }
        let bytes = json_len(&document);
        if bytes > MAX_DOCUMENT_BYTES {
            return Err(OpError::TooLarge { bytes });
        }
        Ok(SessionDoc {
            policy,
            document,
            version: 0,
            bytes,
            recent: VecDeque::new(),
        })
    }

    /// The conflict policy.
    pub fn policy(&self) -> ConflictPolicy {
        self.policy
    }

    /// The current document.
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// The number of operations applied.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The value at `path`, if any.
    pub fn get(&self, path: &DocPath) -> Option<&Value> {
        path.0
            .iter()
            .try_fold(&self.document, |value, token| child(value, token))
    }

    /// Applies one operation based on `base_version`, or refuses it without changing anything.
    pub fn apply(&mut self, path: &DocPath, kind: &OpKind, base_version: u64) -> Result<OpApplied, OpError> {
        if base_version > self.version {
            return Err(OpError::Invalid(format!(
                "base_version {base_version} is ahead of the session's version {}",
                self.version
            )));
        }
        let conflicting = !kind.commutes() && self.changed_since(path, base_version);
        if conflicting && self.policy == ConflictPolicy::Reject {
            return Err(OpError::Conflict {
                path: path.to_string(),
                base_version,
                version: self.version,
                current: self.get(path).cloned(),
            });
        }
        let previous = self.get(path).cloned();
        let plan = self.plan(path, kind, previous.as_ref())?;
        let bytes =
            (self.bytes + plan.bytes_after(path)).saturating_sub(plan.bytes_before(path, previous.as_ref()));
        if bytes > MAX_DOCUMENT_BYTES {
            return Err(OpError::TooLarge { bytes });
        }
        let changed = path.changed_entry(plan.in_list, previous.is_none() || plan.new.is_none());
        // Every check passed: change the document.
        let (parent_path, last) = path.parent_and_last();
        let parent = self.parent_mut(parent_path, plan.new.is_some(), path)?;
        match plan.new {
            Some(value) => put(parent, last, value, path)?,
            None => {
                remove(parent, last);
            }
        }
        self.bytes = bytes;
        self.version += 1;
        self.recent.push_back((self.version, changed));
        if self.recent.len() > CONFLICT_WINDOW {
            self.recent.pop_front();
        }
        Ok(OpApplied {
            version: self.version,
            previous,
            overwrote_newer: conflicting,
        })
    }

    /// Whether a path overlapping `path` changed after `base_version` (true as well when
    /// `base_version` is older than the remembered changes).
    fn changed_since(&self, path: &DocPath, base_version: u64) -> bool {
        if base_version >= self.version {
            return false;
        }
        let oldest_known = self.recent.front().map_or(self.version + 1, |(v, _)| *v);
        if base_version + 1 < oldest_known {
            return true;
        }
        self.recent
            .iter()
            .rev()
            .take_while(|(v, _)| *v > base_version)
            .any(|(_, changed)| changed.overlaps(path))
    }

    /// What the operation will do: the value the path will hold (`None`: removed), which
    /// parents it creates, and where. Checks types, depth and that the parents can hold it,
    /// without changing anything.
    fn plan(&self, path: &DocPath, kind: &OpKind, current: Option<&Value>) -> Result<Plan, OpError> {
        if let Some(value) = kind.value()
            && value_depth(value) > MAX_VALUE_DEPTH
        {
            return Err(OpError::Invalid(format!(
                "{path}: the value is nested deeper than {MAX_VALUE_DEPTH} levels"
            )));
        }
        let wrong = |needed: &str, found: &Value| OpError::WrongType {
            path: path.to_string(),
            op: kind.name().into(),
            needed: needed.into(),
            found: type_name(found).into(),
        };
        // The parents must be objects (created when missing) or lists holding the index.
        let (parent_path, last) = path.parent_and_last();
        let mut value = &self.document;
        let mut created_from = None;
        // Entries of the changed entry's container besides the changed entry.
        let mut others = 0;
        for (depth, token) in parent_path.iter().enumerate() {
            let next = match value {
                Value::Object(map) => map.get(token),
                Value::Array(items) => match list_index(token).and_then(|i| items.get(i)) {
                    Some(item) => Some(item),
                    None => {
                        let at = DocPath(parent_path[..=depth].to_vec());
                        return Err(OpError::NotFound { path: at.to_string() });
                    }
                },
                other => return Err(scalar_parent(&parent_path[..depth], kind, other)),
            };
            match next {
                Some(next) => value = next,
                None if matches!(kind, OpKind::Delete) => {
                    return Err(OpError::NotFound {
                        path: path.to_string(),
                    });
                }
                None => {
                    created_from = Some(depth); // The rest is created as objects.
                    others = container_len(value);
                    break;
                }
            }
        }
        let mut in_list = false;
        if created_from.is_none() {
            others = container_len(value).saturating_sub(usize::from(current.is_some()));
        }
        if created_from.is_none() {
            match value {
                Value::Object(_) => {}
                Value::Array(items) => {
                    in_list = true;
                    if current.is_none()
                        && !matches!(kind, OpKind::Delete)
                        && !(last == "-" || list_index(last) == Some(items.len()))
                    {
                        return Err(OpError::Invalid(format!(
                            "{path}: index {last:?} is out of range for a list of {} (use \"-\" or {} to add at the end)",
                            items.len(),
                            items.len()
                        )));
                    }
                }
                other => return Err(scalar_parent(parent_path, kind, other)),
            }
        }
        let new = match kind {
            OpKind::Set(v) => Some(v.clone()),
            OpKind::Delete => match current {
                Some(_) => None,
                None => {
                    return Err(OpError::NotFound {
                        path: path.to_string(),
                    });
                }
            },
            OpKind::Increment(delta) => match current {
                None => Some(delta.clone()),
                Some(Value::Number(n)) => Some(
                    add(n, delta)
                        .ok_or_else(|| OpError::Invalid(format!("{path}: {n} + {delta} overflows")))?,
                ),
                Some(other) => return Err(wrong("a number", other)),
            },
            OpKind::Append(item) => match current {
                None => Some(Value::Array(vec![item.clone()])),
                Some(Value::Array(items)) => {
                    let mut items = items.clone();
                    items.push(item.clone());
                    Some(Value::Array(items))
                }
                Some(other) => return Err(wrong("a list", other)),
            },
        };
        Ok(Plan {
            new,
            created_from,
            in_list,
            others,
        })
    }

    /// The container that holds the path's last token, creating missing objects on the way
    /// when `create` (checked beforehand by [`SessionDoc::plan`]).
    fn parent_mut(
        &mut self,
        parents: &[String],
        create: bool,
        path: &DocPath,
    ) -> Result<&mut Value, OpError> {
        let mut value = &mut self.document;
        for token in parents {
            value = match value {
                Value::Object(map) => {
                    if create {
                        map.entry(token.clone())
                            .or_insert_with(|| Value::Object(Default::default()))
                    } else {
                        map.get_mut(token).ok_or_else(|| OpError::NotFound {
                            path: path.to_string(),
                        })?
                    }
                }
                Value::Array(items) => {
                    list_index(token)
                        .and_then(|i| items.get_mut(i))
                        .ok_or_else(|| OpError::NotFound {
                            path: path.to_string(),
                        })?
                }
                _ => {
                    return Err(OpError::NotFound {
                        path: path.to_string(),
                    });
                }
            };
        }
        Ok(value)
    }
}

/// What an operation will do (see [`SessionDoc::plan`]).
struct Plan {
    /// The value the path will hold (`None`: removed).
    new: Option<Value>,
    /// The depth of the first parent that does not exist (created as objects from there).
    created_from: Option<usize>,
    /// Whether the entry changed is an element of a list.
    in_list: bool,
    /// The other entries of its container (a comma separates it from them).
    others: usize,
}

impl Plan {
    /// The depth of the entry whose JSON text changes: the first created parent, or the path.
    fn entry_depth(&self, path: &DocPath) -> usize {
        self.created_from.unwrap_or(path.0.len() - 1)
    }

    /// Bytes of the changed entry (its key or separator included) before the operation.
    fn bytes_before(&self, path: &DocPath, previous: Option<&Value>) -> usize {
        match (self.created_from, previous) {
            (None, Some(value)) => json_len(value) + self.overhead(&path.0[self.entry_depth(path)]),
            _ => 0,
        }
    }

    /// Bytes of the changed entry after the operation, created parents included.
    fn bytes_after(&self, path: &DocPath) -> usize {
        let Some(value) = &self.new else { return 0 };
        let depth = self.entry_depth(path);
        // Each created level below the entry wraps the value as {"token": ...}.
        let wrapping: usize = path.0[depth + 1..].iter().map(|t| json_str_len(t) + 3).sum();
        json_len(value) + wrapping + self.overhead(&path.0[depth])
    }

    /// The bytes the entry adds to its container besides its value: `"key":` in an object,
    /// and a comma when the container holds other entries.
    fn overhead(&self, key: &str) -> usize {
        let comma = usize::from(self.others > 0);
        if self.in_list {
            comma
        } else {
            json_str_len(key) + 1 + comma
        }
    }
}

/// Entries of an object or list (0 for scalars).
fn container_len(value: &Value) -> usize {
    match value {
        Value::Object(map) => map.len(),
        Value::Array(items) => items.len(),
        _ => 0,
    }
}

fn json_str_len(text: &str) -> usize {
    serde_json::to_string(text).map_or(text.len() + 2, |s| s.len())
}

/// A list index as JSON Pointer writes it: `0`, or digits without a leading zero.
fn list_index(token: &str) -> Option<usize> {
    let canonical = token == "0"
        || (token.starts_with(|c: char| c.is_ascii_digit() && c != '0')
            && token.bytes().all(|b| b.is_ascii_digit()));
    if canonical { token.parse().ok() } else { None }
}

/// Nesting levels of a value (a scalar is 0, `[]` and `{}` are 1).
fn value_depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(value_depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(value_depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn scalar_parent(parent: &[String], kind: &OpKind, found: &Value) -> OpError {
    OpError::WrongType {
        path: DocPath(parent.to_vec()).to_string(),
        op: kind.name().into(),
        needed: "an object or a list".into(),
        found: type_name(found).into(),
    }
}

fn child<'a>(value: &'a Value, token: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => map.get(token),
        Value::Array(items) => list_index(token).and_then(|i| items.get(i)),
        _ => None,
    }
}

fn put(parent: &mut Value, token: &str, value: Value, path: &DocPath) -> Result<(), OpError> {
    match parent {
        Value::Object(map) => {
            map.insert(token.to_string(), value);
            Ok(())
        }
        Value::Array(items) => {
            match token.parse::<usize>() {
                Ok(i) if i < items.len() => items[i] = value,
                _ => items.push(value),
            }
            Ok(())
        }
        other => Err(OpError::WrongType {
            path: path.to_string(),
            op: "set".into(),
            needed: "an object or a list above it".into(),
            found: type_name(other).into(),
        }),
    }
}

fn remove(parent: &mut Value, token: &str) -> Option<Value> {
    match parent {
        Value::Object(map) => map.remove(token),
        Value::Array(items) => token
            .parse::<usize>()
            .ok()
            .filter(|i| *i < items.len())
            .map(|i| items.remove(i)),
        _ => None,
    }
}

/// `a + b` for JSON numbers: integers stay integers (checked), otherwise floating point.
fn add(a: &serde_json::Number, b: &Value) -> Option<Value> {
    let b = b.as_number()?;
    let integer = |n: &serde_json::Number| n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
    if let (Some(x), Some(y)) = (integer(a), integer(b)) {
        let sum = x.checked_add(y)?;
        return i64::try_from(sum)
            .map(Value::from)
            .ok()
            .or_else(|| u64::try_from(sum).ok().map(Value::from));
    }
    let sum = a.as_f64()? + b.as_f64()?;
    serde_json::Number::from_f64(sum).map(Value::Number)
}

/// The JSON type of a value, for messages.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn json_len(value: &Value) -> usize {
    serde_json::to_string(value).map_or(0, |s| s.len())
}

/// Serializes a JSON value as its text (binary formats such as postcard cannot read
/// self-describing values).
pub(crate) mod json_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_json::Value;

    /// Writes the value's JSON text.
    pub fn serialize<S: Serializer>(value: &Value, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&value.to_string())
    }

    /// Reads a value from its JSON text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}

/// [`json_text`] for optional values.
pub(crate) mod opt_json_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_json::Value;

    /// Writes the value's JSON text, if any.
    pub fn serialize<S: Serializer>(value: &Option<Value>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.serialize_some(&v.to_string()),
            None => s.serialize_none(),
        }
    }

    /// Reads an optional value from its JSON text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(text: &str) -> DocPath {
        DocPath::parse(text).unwrap()
    }

    fn doc(policy: ConflictPolicy) -> SessionDoc {
        SessionDoc::new(policy, json!({"title": "t", "n": 1, "items": ["a"]})).unwrap()
    }

    #[test]
    fn paths_parse_as_json_pointers_and_name_the_problem() {
        assert_eq!(p("/a~1b/~0c").0, vec!["a/b", "~c"]);
        assert_eq!(p("/a~1b/~0c").to_string(), "/a~1b/~0c");
        assert!(DocPath::parse("title").unwrap_err().contains("starting with '/'"));
        assert!(DocPath::parse("").is_err());
        assert!(DocPath::parse("/a~2").unwrap_err().contains('~'));
        assert!(DocPath::parse(&"/a".repeat(40)).unwrap_err().contains("deeper"));
        assert!(p("/a").overlaps(&p("/a/b")) && p("/a/b").overlaps(&p("/a")));
        assert!(!p("/a/b").overlaps(&p("/a/c")));
    }

    #[test]
    fn operations_change_the_document_and_count_versions() {
        let mut d = doc(ConflictPolicy::Lww);
        d.apply(&p("/title"), &OpKind::Set(json!("new")), 0).unwrap();
        d.apply(&p("/meta/owner"), &OpKind::Set(json!("alice")), 1)
            .unwrap();
        d.apply(&p("/n"), &OpKind::Increment(json!(41)), 2).unwrap();
        d.apply(&p("/count"), &OpKind::Increment(json!(2.5)), 3).unwrap();
        d.apply(&p("/items"), &OpKind::Append(json!("b")), 4).unwrap();
        d.apply(&p("/items/-"), &OpKind::Set(json!("c")), 5).unwrap();
        let applied = d.apply(&p("/items/0"), &OpKind::Delete, 6).unwrap();
        assert_eq!(applied.previous, Some(json!("a")));
        assert_eq!(d.version(), 7);
        assert_eq!(
            d.document(),
            &json!({"title": "new", "n": 42, "count": 2.5, "items": ["b", "c"], "meta": {"owner": "alice"}})
        );
    }

    #[test]
    fn bad_operations_leave_the_document_unchanged() {
        let mut d = doc(ConflictPolicy::Lww);
        let before = d.clone();
        let errors = [
            d.apply(&p("/title"), &OpKind::Increment(json!(1)), 0)
                .unwrap_err(),
            d.apply(&p("/n"), &OpKind::Append(json!(1)), 0).unwrap_err(),
            d.apply(&p("/missing"), &OpKind::Delete, 0).unwrap_err(),
            d.apply(&p("/title/x"), &OpKind::Set(json!(1)), 0).unwrap_err(),
            d.apply(&p("/items/5"), &OpKind::Set(json!(1)), 0).unwrap_err(),
            d.apply(&p("/items/7/x"), &OpKind::Set(json!(1)), 0).unwrap_err(),
            d.apply(&p("/n"), &OpKind::Set(json!(1)), 9).unwrap_err(),
            d.apply(&p("/n"), &OpKind::Increment(json!(u64::MAX)), 0)
                .unwrap_err(),
        ];
        assert!(matches!(errors[0], OpError::WrongType { .. }), "{:?}", errors[0]);
        assert!(
            errors[0]
                .to_string()
                .contains("/title holds a string, increment needs a number")
        );
        assert!(matches!(errors[1], OpError::WrongType { .. }));
        assert!(matches!(errors[2], OpError::NotFound { .. }));
        assert!(matches!(errors[3], OpError::WrongType { .. }), "{:?}", errors[3]);
        assert!(matches!(errors[4], OpError::Invalid(_)));
        assert!(matches!(errors[5], OpError::NotFound { .. }), "{:?}", errors[5]);
        assert!(errors[6].to_string().contains("ahead"));
        assert!(errors[7].to_string().contains("overflows"));
        assert_eq!(d, before);
        assert!(OpKind::parse("increment", Some(json!("x"))).is_err());
        assert!(OpKind::parse("move", None).unwrap_err().contains("set, delete"));
        assert!(SessionDoc::new(ConflictPolicy::Lww, json!([1])).is_err());
    }

    #[test]
    fn reject_refuses_outdated_overlapping_changes_with_the_current_value() {
        let mut d = doc(ConflictPolicy::Reject);
        d.apply(&p("/title"), &OpKind::Set(json!("mine")), 0).unwrap();
        // Based on version 0, touching /title, changed at version 1: refused.
        let err = d
            .apply(&p("/title"), &OpKind::Set(json!("theirs")), 0)
            .unwrap_err();
        assert_eq!(
            err,
            OpError::Conflict {
                path: "/title".into(),
                base_version: 0,
                version: 1,
                current: Some(json!("mine")),
            }
        );
        // Another path, or a commuting op, is fine; so is the rebased op.
        d.apply(&p("/other"), &OpKind::Set(json!(1)), 0).unwrap();
        d.apply(&p("/n"), &OpKind::Increment(json!(1)), 0).unwrap();
        d.apply(&p("/title"), &OpKind::Set(json!("theirs")), 1).unwrap();
        assert_eq!(d.document()["title"], json!("theirs"));
        // A parent changed counts too.
        let err = d.apply(&p("/title/x"), &OpKind::Set(json!(1)), 1).unwrap_err();
        assert!(matches!(err, OpError::Conflict { .. }));
    }

    #[test]
    fn lww_applies_and_reports_what_it_overwrote() {
        let mut d = doc(ConflictPolicy::Lww);
        d.apply(&p("/title"), &OpKind::Set(json!("mine")), 0).unwrap();
        let applied = d.apply(&p("/title"), &OpKind::Set(json!("theirs")), 0).unwrap();
        assert!(applied.overwrote_newer);
        assert_eq!(applied.previous, Some(json!("mine")));
        assert_eq!(d.document()["title"], json!("theirs"));
    }

    #[test]
    fn key_names_and_created_parents_count_towards_the_size_limit() {
        let mut d = doc(ConflictPolicy::Lww);
        let start = d.bytes;
        // Creating and deleting a nested entry leaves the count where it was (no drift).
        d.apply(&p("/p/q"), &OpKind::Set(json!(1)), 0).unwrap();
        assert_eq!(d.bytes, json_len(d.document()), "exact after creating parents");
        d.apply(&p("/p"), &OpKind::Delete, 1).unwrap();
        assert_eq!(d.bytes, start);
        // Long keys count.
        let key = "k".repeat(1000);
        for v in 0..1100 {
            let path = DocPath(vec![format!("{key}{v}")]);
            if let Err(e) = d.apply(&path, &OpKind::Set(json!(0)), 2 + v) {
                assert!(matches!(e, OpError::TooLarge { .. }), "{e}");
                assert!(json_len(d.document()) <= MAX_DOCUMENT_BYTES);
                return;
            }
        }
        panic!("1,100 keys of 1 KB fit in a 1 MiB document");
    }

    #[test]
    fn the_size_count_equals_the_json_text_after_any_operations() {
        let paths = [
            "/a", "/a/b", "/l", "/l/-", "/l/0", "/l/1", "/o", "/o/k", "/o/k/x", "/n", "/e",
        ];
        let values = [
            json!(1),
            json!("s"),
            json!([]),
            json!({}),
            json!({"q": [1, 2]}),
            json!(null),
        ];
        let mut d = SessionDoc::new(ConflictPolicy::Lww, json!({})).unwrap();
        let mut x: u64 = 7;
        for step in 0..5_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let path = p(paths[(x >> 33) as usize % paths.len()]);
            let value = values[(x >> 20) as usize % values.len()].clone();
            let kind = match (x >> 10) % 4 {
                0 => OpKind::Set(value),
                1 => OpKind::Delete,
                2 => OpKind::Append(value),
                _ => OpKind::Increment(json!(1)),
            };
            let _ = d.apply(&path, &kind, d.version());
            assert_eq!(
                d.bytes,
                json_len(d.document()),
                "after step {step}: {}",
                d.document()
            );
        }
    }

    #[test]
    fn deep_values_are_refused_so_every_document_stays_readable() {
        let mut deep = json!(1);
        for _ in 0..MAX_VALUE_DEPTH {
            deep = json!([deep]);
        }
        let mut d = doc(ConflictPolicy::Lww);
        let path = p(&"/a".repeat(MAX_PATH_DEPTH));
        d.apply(&path, &OpKind::Set(deep.clone()), 0).unwrap();
        let text = serde_json::to_string(d.document()).unwrap();
        assert!(
            serde_json::from_str::<Value>(&text).is_ok(),
            "the deepest document reads back"
        );
        let deeper = json!([deep]);
        let err = d.apply(&p("/b"), &OpKind::Set(deeper.clone()), 1).unwrap_err();
        assert!(err.to_string().contains("deeper"), "{err}");
        assert!(SessionDoc::new(ConflictPolicy::Lww, json!({"x": deeper})).is_err());
    }

    #[test]
    fn floats_and_large_integers_survive_encoding_and_increments() {
        let mut d = doc(ConflictPolicy::Lww);
        d.apply(&p("/f"), &OpKind::Increment(json!(1.2088995980580641)), 0)
            .unwrap();
        d.apply(&p("/f"), &OpKind::Increment(json!(0.1)), 1).unwrap();
        d.apply(&p("/u"), &OpKind::Set(json!(u64::MAX - 1)), 2).unwrap();
        d.apply(&p("/u"), &OpKind::Increment(json!(1)), 3).unwrap();
        assert_eq!(d.document()["u"], json!(u64::MAX));
        assert!(
            d.apply(&p("/u"), &OpKind::Increment(json!(1)), 4).is_err(),
            "u64 overflow"
        );
        d.apply(&p("/i"), &OpKind::Set(json!(-5)), 4).unwrap();
        d.apply(&p("/i"), &OpKind::Increment(json!(u64::MAX)), 5).unwrap();
        assert_eq!(d.document()["i"], json!(u64::MAX - 5));
        // A replica restored from a snapshot holds bit-identical numbers.
        let json = serde_json::to_string(&d).unwrap();
        let back: SessionDoc = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
        let f = |d: &SessionDoc| d.document()["f"].as_f64().unwrap().to_bits();
        assert_eq!(f(&back), f(&d));
        // Every float reads back bit for bit from its JSON text (serde_json's
        // `float_roundtrip`): a snapshot holds documents as JSON text.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..10_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let value = (x >> 11) as f64 / (1u64 << 53) as f64 * 1e6;
            let text = serde_json::to_string(&json!(value)).unwrap();
            let read: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(read.as_f64().unwrap().to_bits(), value.to_bits(), "{text}");
        }
    }

    #[test]
    fn list_inserts_and_removals_conflict_with_element_changes() {
        let mut d = SessionDoc::new(ConflictPolicy::Reject, json!({"items": ["a", "b", "c"]})).unwrap();
        d.apply(&p("/items/0"), &OpKind::Delete, 0).unwrap();
        // Based on version 0, /items/1 meant "b"; it is now "c": refused.
        let err = d.apply(&p("/items/1"), &OpKind::Set(json!("B")), 0).unwrap_err();
        assert!(matches!(err, OpError::Conflict { .. }), "{err}");
        // Non-canonical indexes are not indexes.
        assert!(d.apply(&p("/items/+0"), &OpKind::Set(json!(1)), 1).is_err());
        assert!(d.apply(&p("/items/01"), &OpKind::Set(json!(1)), 1).is_err());
        assert_eq!(d.document(), &json!({"items": ["b", "c"]}));
    }

    #[test]
    fn documents_are_bounded_and_survive_binary_encoding() {
        let mut d = doc(ConflictPolicy::Lww);
        let big = json!("x".repeat(600 * 1024));
        d.apply(&p("/a"), &OpKind::Set(big.clone()), 0).unwrap();
        let err = d.apply(&p("/b"), &OpKind::Set(big), 1).unwrap_err();
        assert!(matches!(err, OpError::TooLarge { .. }));
        let json = serde_json::to_string(&d).unwrap();
        let back: SessionDoc = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
    }
}
