//! National clouds, by name, mapped to fixed hosts. A URL is never accepted from a resource.

use crate::crd::connection::AzureCloud;

/// The fixed hosts of one Azure cloud.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloudHosts {
    /// Entra ID authority host that discovery and token requests go to.
    pub login: &'static str,
    /// Hosts an issuer may legitimately name for this cloud (aliases of `login`).
    pub issuer_aliases: &'static [&'static str],
    /// Microsoft Graph host (token scope and expiry lookups).
    pub graph: &'static str,
}

pub fn hosts(cloud: AzureCloud) -> CloudHosts {
    match cloud {
        AzureCloud::AzurePublic => CloudHosts {
            login: "login.microsoftonline.com",
            issuer_aliases: &["login.microsoftonline.com", "login.windows.net", "login.microsoft.com", "sts.windows.net"],
            graph: "graph.microsoft.com",
        },
        AzureCloud::AzureUSGovernment => CloudHosts {
            login: "login.microsoftonline.us",
            issuer_aliases: &["login.microsoftonline.us", "login.usgovcloudapi.net"],
            graph: "graph.microsoft.us",
        },
        AzureCloud::AzureChina => CloudHosts {
            login: "login.partner.microsoftonline.cn",
            issuer_aliases: &["login.partner.microsoftonline.cn", "login.chinacloudapi.cn"],
            graph: "microsoftgraph.chinacloudapi.cn",
        },
    }
}

impl CloudHosts {
    /// `https://{graph}/.default`, the scope a client-credentials request asks for.
    pub fn graph_scope(&self) -> String {
        format!("https://{}/.default", self.graph)
    }
}
