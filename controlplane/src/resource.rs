//! What the store and the API need to know about each kind of resource.

use patronus_proto::v1::{Application, ObjectMeta, Peer, Policy, Site};
use prost::Message;
use redb::TableDefinition;

use crate::validate::{self, Violations};

/// A kind of resource kept by the control plane.
pub trait Resource: Message + Default + Clone + 'static {
    /// The kind's name in messages (`site`), also the prefix of field paths.
    const KIND: &'static str;
    /// The table holding this kind, by name.
    const TABLE: TableDefinition<'static, &'static str, &'static [u8]>;
    /// The table mapping this kind's unique spec key to the resource name, if it has one.
    const UNIQUE: Option<TableDefinition<'static, &'static str, &'static str>> = None;

    /// The metadata (None when the client sent none).
    fn meta(&self) -> Option<&ObjectMeta>;
    /// The metadata, created empty if missing.
    fn meta_mut(&mut self) -> &mut ObjectMeta;
    /// The spec, encoded: a change bumps the generation.
    fn spec_bytes(&self) -> Vec<u8>;
    /// Drops fields only the server sets (status).
    fn clear_output_only(&mut self);
    /// Field violations of the resource as a client wrote it.
    fn validate(&self, v: &mut Violations);
    /// The site the resource belongs to ("" for policies, which select sites by label).
    fn site_scope(&self) -> &str;
    /// Most bytes the resources of the kind in one group (same
    /// [`Resource::site_scope`]) may take together: they all travel in one
    /// snapshot (a site's peers; every policy and every application, which
    /// any site may carry). `None`: no cap.
    const TOTAL_BYTES: Option<usize> = None;

    /// The spec value that must be unique across the kind (site_id for sites).
    fn unique_key(&self) -> Option<&str> {
        None
    }
}

/// The resource's name, or "" when it has no metadata.
pub fn name_of<R: Resource>(r: &R) -> &str {
    r.meta().map_or("", |m| m.name.as_str())
}

/// The methods every kind implements the same way (metadata and spec).
macro_rules! common_resource_methods {
    () => {
        fn meta(&self) -> Option<&ObjectMeta> {
            self.metadata.as_ref()
        }
        fn meta_mut(&mut self) -> &mut ObjectMeta {
            self.metadata.get_or_insert_with(Default::default)
        }
        fn spec_bytes(&self) -> Vec<u8> {
            self.spec
                .as_ref()
                .map(Message::encode_to_vec)
                .unwrap_or_default()
        }
    };
}

impl Resource for Site {
    const KIND: &'static str = "site";
    const TABLE: TableDefinition<'static, &'static str, &'static [u8]> =
        TableDefinition::new("sites");
    const UNIQUE: Option<TableDefinition<'static, &'static str, &'static str>> =
        Some(TableDefinition::new("site_ids"));
    common_resource_methods!();
    fn clear_output_only(&mut self) {
        self.status = None;
    }
    fn validate(&self, v: &mut Violations) {
        validate::site(self, v);
    }
    fn site_scope(&self) -> &str {
        self.spec.as_ref().map_or("", |s| s.site_id.as_str())
    }
    fn unique_key(&self) -> Option<&str> {
        self.spec.as_ref().map(|s| s.site_id.as_str())
    }
}

impl Resource for Peer {
    const KIND: &'static str = "peer";
    const TABLE: TableDefinition<'static, &'static str, &'static [u8]> =
        TableDefinition::new("peers");
    const TOTAL_BYTES: Option<usize> = Some(validate::SNAPSHOT_SHARE_BYTES);
    common_resource_methods!();
    fn clear_output_only(&mut self) {
        self.status = None;
    }
    fn validate(&self, v: &mut Violations) {
        validate::peer(self, v);
    }
    fn site_scope(&self) -> &str {
        self.spec.as_ref().map_or("", |s| s.site_id.as_str())
    }
}

impl Resource for Policy {
    const KIND: &'static str = "policy";
    const TABLE: TableDefinition<'static, &'static str, &'static [u8]> =
        TableDefinition::new("policies");
    const TOTAL_BYTES: Option<usize> = Some(validate::SNAPSHOT_SHARE_BYTES);
    common_resource_methods!();
    fn clear_output_only(&mut self) {
        self.status = None;
    }
    fn validate(&self, v: &mut Violations) {
        validate::policy(self, v);
    }
    fn site_scope(&self) -> &str {
        ""
    }
}

impl Resource for Application {
    const KIND: &'static str = "application";
    const TABLE: TableDefinition<'static, &'static str, &'static [u8]> =
        TableDefinition::new("applications");
    const UNIQUE: Option<TableDefinition<'static, &'static str, &'static str>> =
        Some(TableDefinition::new("application_names"));
    const TOTAL_BYTES: Option<usize> = Some(validate::SNAPSHOT_SHARE_BYTES);
    common_resource_methods!();
    /// Applications have no status.
    fn clear_output_only(&mut self) {}
    fn validate(&self, v: &mut Violations) {
        validate::application(self, v);
    }
    fn site_scope(&self) -> &str {
        ""
    }
    fn unique_key(&self) -> Option<&str> {
        self.spec.as_ref().map(|s| s.app_name.as_str())
    }
}
