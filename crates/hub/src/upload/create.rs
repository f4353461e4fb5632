//! `POST {endpoint}/api/repos/create`: creates the model repository; 409 (it exists) is fine.
//! Reference: huggingface_hub `HfApi.create_repo`.

use crate::error::Result;
use crate::http::{Body, Client};
use crate::reference::RepoId;

/// Creates `repo` (private or public) unless it exists; returns whether it was created.
pub fn create_repo(client: &Client, repo: &RepoId, private: bool) -> Result<bool> {
    let url = format!("{}/api/repos/create", client.endpoint);
    let (organization, name) = repo.id.split_once('/').expect("RepoId has org/name");
    let body = serde_json::json!({ "name": name, "organization": organization, "private": private });
    let body = serde_json::to_vec(&body).expect("json");
    let resp = client.send("POST", &url, &[("Content-Type", "application/json")], Body::Bytes(&body))?;
    let resp = client.expect("POST", &url, resp, &[409])?;
    Ok(resp.status().as_u16() != 409)
}
