//! Gateway credentials on the Kubernetes backend: one ConfigMap per endpoint in the control
//! namespace, `recast-gwcred-HASH`, with data `tokenHash` (the SHA-256 of the current token,
//! never the token), `issuedAt` and `enrolled` (the attempt ids that enrolled, newest last, at
//! most [`ENROLLMENTS_KEPT`]). Written by the gateway replicas (enrollment) and by
//! `recastctl token` (issue, rotate, revoke); read by every replica through a watch
//! (`gateway::kube_ledger`). Every write replaces the object at the version it was read at.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, PostParams};
use ring::rand::SystemRandom;
use serde_json::json;

use super::{CredentialError, new_token, token_hash};
use crate::store::Key;
use crate::store::control::{ControlKind, control_meta, control_name, control_owner};

/// Attempt ids kept per endpoint for enroll-once (an attempt enrolls within hours of its
/// start; older ids can no longer be presented with a valid enrollment credential).
pub const ENROLLMENTS_KEPT: usize = 16;
/// A write that keeps losing the race to other writers gives up after this many tries.
const MAX_TRIES: usize = 16;

pub(crate) fn api_err(e: kube::Error) -> CredentialError {
    CredentialError::Apiserver(e.to_string())
}

pub(crate) fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// The endpoint a credential object is for and its current token hash (None: not a
/// credential object recast wrote, or one without a token).
pub fn token_of(cm: &ConfigMap) -> Option<(Key, Option<String>)> {
    let key = control_owner(ControlKind::GatewayCredential, cm)?;
    let hash = cm.data.as_ref().and_then(|d| d.get("tokenHash")).cloned();
    Some((key, hash))
}

pub struct KubeCredentials {
    client: Client,
    namespace: String,
    rng: SystemRandom,
}

impl KubeCredentials {
    pub fn new(client: Client, namespace: &str) -> Self {
        KubeCredentials {
            client,
            namespace: namespace.to_string(),
            rng: SystemRandom::new(),
        }
    }

    /// The control namespace's ConfigMaps.
    pub fn api(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Reads, changes and writes an endpoint's credential object at the version read,
    /// retrying when another writer moved it. `change` gets the current data (None: no
    /// object) and returns the new data (None: write nothing) and its result. Returns the
    /// result and the object as written.
    async fn update<T>(
        &self,
        key: &Key,
        change: impl Fn(Option<&BTreeMap<String, String>>) -> (Option<BTreeMap<String, String>>, T),
    ) -> Result<(T, Option<ConfigMap>), CredentialError> {
        let api = self.api();
        let name = control_name(ControlKind::GatewayCredential, key);
        for _ in 0..MAX_TRIES {
            let current = api.get_opt(&name).await.map_err(api_err)?;
            let owned = current.as_ref().filter(|cm| {
                control_owner(ControlKind::GatewayCredential, cm).as_ref() == Some(key)
            });
            let (data, result) = change(owned.and_then(|cm| cm.data.as_ref()));
            let Some(data) = data else {
                return Ok((result, None));
            };
            let written = match &current {
                Some(cm) => {
                    let mut next = cm.clone();
                    next.data = Some(data);
                    api.replace(&name, &PostParams::default(), &next).await
                }
                None => {
                    let meta = control_meta(ControlKind::GatewayCredential, key, None);
                    let cm: ConfigMap =
                        serde_json::from_value(json!({"metadata": meta, "data": data}))
                            .map_err(|e| CredentialError::Apiserver(e.to_string()))?;
                    api.create(&PostParams::default(), &cm).await
                }
            };
            match written {
                Ok(cm) => return Ok((result, Some(cm))),
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(api_err(e)),
            }
        }
        Err(CredentialError::Apiserver(format!(
            "the credential of {key} kept changing under this write; try again"
        )))
    }

    /// Issues (or rotates) the endpoint's token: the token (shown once) and the object.
    pub async fn issue(
        &self,
        key: &Key,
        now: &str,
    ) -> Result<(String, ConfigMap), CredentialError> {
        let token = new_token(&self.rng)?;
        let hash = token_hash(&token);
        let ((), written) = self
            .update(key, |old| {
                let mut data = old.cloned().unwrap_or_default();
                data.insert("tokenHash".into(), hash.clone());
                data.insert("issuedAt".into(), now.to_string());
                (Some(data), ())
            })
            .await?;
        let cm = written.ok_or_else(|| CredentialError::Apiserver("nothing written".into()))?;
        Ok((token, cm))
    }

    /// Issues the token for the enrollment of `attempt`, once: None when that attempt
    /// already enrolled (its credential works one time).
    pub async fn enroll_once(
        &self,
        key: &Key,
        attempt: &str,
        now: &str,
    ) -> Result<Option<(String, ConfigMap)>, CredentialError> {
        let token = new_token(&self.rng)?;
        let hash = token_hash(&token);
        let (fresh, written) = self
            .update(key, |old| {
                let mut data = old.cloned().unwrap_or_default();
                let mut enrolled: Vec<String> = data
                    .get("enrolled")
                    .map(|e| {
                        e.split(',')
                            .filter(|a| !a.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                if enrolled.iter().any(|a| a == attempt) {
                    return (None, false);
                }
                enrolled.push(attempt.to_string());
                let skip = enrolled.len().saturating_sub(ENROLLMENTS_KEPT);
                data.insert("enrolled".into(), enrolled[skip..].join(","));
                data.insert("tokenHash".into(), hash.clone());
                data.insert("issuedAt".into(), now.to_string());
                (Some(data), true)
            })
            .await?;
        Ok(match (fresh, written) {
            (true, Some(cm)) => Some((token, cm)),
            _ => None,
        })
    }

    /// Revokes the endpoint's token; true if it had one. The object stays with its
    /// enrollments, so an attempt that enrolled cannot enroll again after a revocation.
    pub async fn revoke(&self, key: &Key) -> Result<(bool, Option<ConfigMap>), CredentialError> {
        self.update(key, |old| {
            let had = old.is_some_and(|d| d.contains_key("tokenHash"));
            if !had {
                return (None, false);
            }
            let mut data = old.cloned().unwrap_or_default();
            data.remove("tokenHash");
            (Some(data), true)
        })
        .await
    }

    /// The endpoint's current token hash, read from the apiserver (None: no token).
    pub async fn current_hash(&self, key: &Key) -> Result<Option<String>, CredentialError> {
        let name = control_name(ControlKind::GatewayCredential, key);
        let cm = self.api().get_opt(&name).await.map_err(api_err)?;
        Ok(cm
            .as_ref()
            .and_then(token_of)
            .filter(|(k, _)| k == key)
            .and_then(|(_, h)| h))
    }
}
