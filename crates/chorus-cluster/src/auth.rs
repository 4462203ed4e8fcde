//! Node-to-node authentication with the cluster secret.
//!
//! Without mutual TLS, every call carries `x-chorus-auth`: the hex SHA-256 of
//! `"chorus-cluster-auth-v1:"` plus the secret (the secret itself never crosses the wire, but
//! the proof is static: whoever captures it can replay it). With mutual TLS the secret proves
//! itself once per connection instead, bound to that TLS session (`crate::tls`), and calls
//! carry no proof. Calls also carry `x-chorus-cluster-id`. The receiver compares in constant
//! time and refuses mismatches with a status that says which check failed, and logs the
//! refusal with the caller's address.

use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;

/// Metadata key of the secret proof.
pub const AUTH_HEADER: &str = "x-chorus-auth";
/// Metadata key of the caller's cluster id.
pub const CLUSTER_ID_HEADER: &str = "x-chorus-cluster-id";

/// The proof a node presents: a digest of the cluster secret.
pub fn secret_proof(secret: &str) -> String {
    let digest = Sha256::digest(format!("chorus-cluster-auth-v1:{secret}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a peer's call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerAuthError {
    /// The call carried no proof.
    #[error("no cluster credentials (missing {AUTH_HEADER})")]
    Missing,
    /// The proof does not match this node's secret.
    #[error("wrong cluster secret")]
    WrongSecret,
    /// The caller belongs to another cluster.
    #[error("caller belongs to cluster {theirs}, this node to cluster {ours}")]
    OtherCluster {
        /// The caller's cluster id.
        theirs: String,
        /// Ours.
        ours: String,
    },
}

/// Whether `presented` is our proof (constant-time).
pub fn proof_matches(presented: &str, proof: &str) -> bool {
    constant_time_eq(presented.as_bytes(), proof.as_bytes())
}

/// Adds the static proof to a call's metadata (`None`: the connection proved the secret).
pub fn present(metadata: &mut MetadataMap, proof: Option<&str>) {
    if let Some(proof) = proof {
        metadata.insert(AUTH_HEADER, proof.parse().expect("hex is valid metadata"));
    }
}

/// Checks a call's metadata against our proof (`None`: every connection proved the secret
/// when it opened, see `crate::tls`) and cluster id.
pub fn check(
    metadata: &MetadataMap,
    proof: Option<&str>,
    our_cluster_id: Option<&str>,
) -> Result<(), PeerAuthError> {
    if let Some(proof) = proof {
        let presented = metadata
            .get(AUTH_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or(PeerAuthError::Missing)?;
        if !constant_time_eq(presented.as_bytes(), proof.as_bytes()) {
            return Err(PeerAuthError::WrongSecret);
        }
    }
    let theirs = metadata
        .get(CLUSTER_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Some(ours) = our_cluster_id
        && !theirs.is_empty()
        && theirs != ours
    {
        return Err(PeerAuthError::OtherCluster {
            theirs: theirs.to_string(),
            ours: ours.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(proof: &str, cluster: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert(AUTH_HEADER, proof.parse().unwrap());
        m.insert(CLUSTER_ID_HEADER, cluster.parse().unwrap());
        m
    }

    #[test]
    fn accepts_right_secret_and_refuses_others() {
        let ours = secret_proof("s3cret-one");
        assert_eq!(check(&metadata(&ours, ""), Some(&ours), Some("c1")), Ok(()));
        assert_eq!(check(&metadata(&ours, "c1"), Some(&ours), Some("c1")), Ok(()));
        assert_eq!(
            check(&metadata(&secret_proof("other"), "c1"), Some(&ours), Some("c1")),
            Err(PeerAuthError::WrongSecret)
        );
        assert_eq!(
            check(&MetadataMap::new(), Some(&ours), None),
            Err(PeerAuthError::Missing)
        );
        assert!(matches!(
            check(&metadata(&ours, "c2"), Some(&ours), Some("c1")),
            Err(PeerAuthError::OtherCluster { .. })
        ));
        assert_ne!(ours, "s3cret-one", "the secret itself never travels");
        // Over mutual TLS the connection proved the secret: calls need only the cluster id.
        assert_eq!(check(&MetadataMap::new(), None, Some("c1")), Ok(()));
    }
}
