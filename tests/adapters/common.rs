//! What the adapter tests share: the Azure side of a connection and a sync request, and an
//! emulated Azure reached as the operator reaches it.

use idp_bridge::{
    broker::{
        AzureCredentials, BrokerClient, BrokerError, BrokerTarget, DeleteRequest, SyncOutcome, SyncRequest,
        ownership::{Claim, Ownership},
    },
    crd::connection::{
        AzureAdConnectionSpec, AzureCloud, AzureSpec, BrokerRef, BrokerRefKind, DeletionPolicy, ExpirySpec, ManagementPolicy, SecretKeyRef,
        SignInAudience, ValidationMode, ValidationSpec,
    },
    secret::{Fingerprinter, SecretValue},
    upstream::{EndpointOverrides, Upstream},
};
use idp_bridge_devenv::{
    azure::AzureEmulator,
    tls::{TestCa, install_crypto_provider},
};
use tempfile::NamedTempFile;

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const TENANT_DOMAIN: &str = "contoso.onmicrosoft.com";
pub const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
/// The owner marker of the tests' connection.
pub const OWNER: &str = "0123456789abcdef0123456789abcdef";

/// What the tests' connection owns, as the controller hands it over once its claim (for brokers
/// that need one) says a create is under way: whatever it creates or finds marked as its own.
pub const OWNED: Ownership<'static> = Ownership { owner: OWNER, adopt: false, claim: Some(Claim::Creating) };
/// The same connection before its claim says anything (for brokers that need one): it takes
/// only what its status records.
pub const FRESH: Ownership<'static> = Ownership { claim: Some(Claim::Fresh), ..OWNED };
/// The same connection with `spec.adopt` and a fresh claim: it takes an object idp-bridge did not
/// create.
pub const ADOPTING: Ownership<'static> = Ownership { adopt: true, ..FRESH };

/// A validated client secret and its fingerprint.
pub struct Creds {
    pub secret: SecretValue,
    pub fingerprint: String,
}

impl Creds {
    pub fn new(fingerprints: &Fingerprinter, secret: &str) -> Self {
        let secret = SecretValue::new(secret);
        Creds { fingerprint: fingerprints.fingerprint(&secret), secret }
    }
}

/// A single-tenant connection (tenant given as a domain) to broker `broker`, Delete policy;
/// `block` sets its broker block.
pub fn connection_spec(broker: &str, block: impl FnOnce(&mut AzureAdConnectionSpec)) -> AzureAdConnectionSpec {
    let mut spec = AzureAdConnectionSpec {
        broker_ref: BrokerRef { kind: BrokerRefKind::IdentityBroker, name: broker.into() },
        azure: AzureSpec {
            tenant: TENANT_DOMAIN.into(),
            cloud: AzureCloud::AzurePublic,
            client_id: CLIENT.into(),
            client_secret_ref: SecretKeyRef { name: "contoso-entra".into(), key: "client-secret".into() },
            sign_in_audience: SignInAudience::SingleTenant,
            registration: Default::default(),
        },
        validation: ValidationSpec::default(),
        expiry: ExpirySpec::default(),
        auth0: None,
        cloudflare: None,
        logto: None,
        unified: None,
        deletion_policy: DeletionPolicy::Delete,
        suspend: false,
        management_policy: ManagementPolicy::Full,
        adopt: false,
    };
    block(&mut spec);
    spec
}

/// One sync request; the Azure side comes from `spec` and the validated `creds` (the tenant
/// resolves to `TENANT` unless validation is off).
pub fn request<'a>(
    spec: &'a AzureAdConnectionSpec,
    creds: &'a Creds,
    known_id: Option<&'a str>,
    synced_fingerprint: Option<&'a str>,
    observe_only: bool,
) -> SyncRequest<'a> {
    request_as(spec, creds, known_id, synced_fingerprint, observe_only, OWNED)
}

/// One sync request with the given `ownership`.
pub fn request_as<'a>(
    spec: &'a AzureAdConnectionSpec,
    creds: &'a Creds,
    known_id: Option<&'a str>,
    synced_fingerprint: Option<&'a str>,
    observe_only: bool,
    ownership: Ownership<'a>,
) -> SyncRequest<'a> {
    let target = BrokerTarget::of(spec).expect("the spec has a broker block");
    SyncRequest { target, azure: azure(spec, creds), known_id, synced_fingerprint, observe_only, ownership }
}

/// The validated Azure side of `spec` with `creds`.
fn azure<'a>(spec: &'a AzureAdConnectionSpec, creds: &'a Creds) -> AzureCredentials<'a> {
    let tenant_id = (spec.validation.mode != ValidationMode::None).then_some(TENANT);
    AzureCredentials {
        cloud: spec.azure.cloud,
        tenant: &spec.azure.tenant,
        tenant_id,
        client_id: &spec.azure.client_id,
        secret: &creds.secret,
        fingerprint: &creds.fingerprint,
        audience: spec.azure.sign_in_audience,
    }
}

/// The delete of `spec`'s broker object, recorded under `known_id`.
pub fn deletion<'a>(spec: &'a AzureAdConnectionSpec, known_id: Option<&'a str>) -> DeleteRequest<'a> {
    DeleteRequest::new(spec, known_id, OWNED).expect("the spec has a broker block")
}

/// A first sync of `spec` as the controller runs it: the broker block resolved from the spec
/// (which may refuse it), then the sync.
pub async fn sync_spec(
    client: &BrokerClient,
    spec: &AzureAdConnectionSpec,
    creds: &Creds,
    observe_only: bool,
) -> Result<SyncOutcome, BrokerError> {
    let target = BrokerTarget::of(spec)?;
    let request =
        SyncRequest { target, azure: azure(spec, creds), known_id: None, synced_fingerprint: None, observe_only, ownership: OWNED };
    client.sync(&request).await
}

/// A delete of `spec`'s broker object as the controller runs it: the broker block resolved from
/// the spec (which may refuse it), then the delete.
pub async fn delete_spec(client: &BrokerClient, spec: &AzureAdConnectionSpec, known_id: Option<&str>) -> Result<(), BrokerError> {
    client.delete(&DeleteRequest::new(spec, known_id, OWNED)?).await
}

/// An Azure emulator (login and Graph) with the tenant [`TENANT`] ([`TENANT_DOMAIN`]), and an
/// upstream client that reaches it through endpoint overrides and the test CA, whose file the
/// caller keeps alive.
pub fn azure_upstream() -> (AzureEmulator, Upstream, NamedTempFile) {
    install_crypto_provider();
    let ca = TestCa::new();
    let ca_file = NamedTempFile::new().unwrap();
    ca.write_pem(ca_file.path()).unwrap();
    let emu = AzureEmulator::start(&ca).unwrap();
    let mut overrides = EndpointOverrides::default();
    for host in ["login.microsoftonline.com", "graph.microsoft.com"] {
        overrides.insert(host, emu.base_url());
    }
    emu.add_tenant(TENANT, &[TENANT_DOMAIN]);
    let upstream = Upstream::new(overrides, Some(ca_file.path()), std::time::Duration::from_secs(5)).unwrap();
    (emu, upstream, ca_file)
}

/// The outcome of a first sync that created object `id`.
pub fn created(id: &str) -> SyncOutcome {
    SyncOutcome {
        id: Some(id.to_owned()),
        differences: vec!["connection (created)".into()],
        wrote: true,
        extras: None,
        create_deferred: false,
    }
}
