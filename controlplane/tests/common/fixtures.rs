//! A minimal valid Site, shared by the tests and the load-generating examples
//! (which include this file by path).

use patronus_proto::v1::{Endpoint, ObjectMeta, Site, SiteSpec};

/// A site called `name` (also its site_id) in us-east-1 with `display_name`.
pub fn site(name: &str, display_name: &str) -> Site {
    Site {
        metadata: Some(ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        spec: Some(SiteSpec {
            site_id: name.into(),
            display_name: display_name.into(),
            region: "us-east-1".into(),
            tunnel_endpoint: Some(Endpoint {
                address: "192.0.2.1".into(),
                port: 51820,
            }),
            peers: Vec::new(),
            uplinks: Vec::new(),
            qos_classes: None,
        }),
        status: None,
    }
}
