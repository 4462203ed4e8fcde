//! The HTTP face of a Chorus node (axum): health, readiness, metrics, the REST API and the
//! admin API. Handlers are thin: they check input and permissions, then call the
//! [`chorus_cluster::ClusterNode`].
//!
//! | route | what |
//! |---|---|
//! | `GET /health` | the process is alive |
//! | `GET /ready` | 200 when member, every shard led, applied caught up; else 503 with the failing checks |
//! | `GET /metrics` | Prometheus text |
//! | `GET /api/v1/cluster` | cluster status (JSON) |
//! | `POST /api/v1/cluster/join`, `/remove` | membership (admin or cluster secret) |
//! | `POST /api/v1/channels/{channel}/publish` | publish, answered after commit |
//! | `GET /api/v1/channels/{channel}/history` | read history (linearizable) |
//! | `POST /api/v1/channels/{channel}/read` | mark read up to an offset |
//! | `GET /api/v1/unread` | the caller's read positions and unread counts |
//! | `GET /api/v1/presence/{user}` | a user's presence |
//! | `GET /api/v1/channels/{channel}/roster` | who is subscribed to a channel with a roster |
//! | `PUT`/`GET /api/v1/sessions/{session}` | create / read a collaborative session |
//! | `POST /api/v1/sessions/{session}/ops` | apply an operation (409 on a rejected conflict) |
//! | `PUT /test/isolation` | test-only partition switch (404 unless `CHORUS_TEST_FAULT_INJECTION` is set) |

pub mod api;
pub mod error;
mod features;
pub mod metrics;
pub mod server;

pub use api::{HttpState, router};
pub use error::ApiError;
