//! The local API's OpenAPI 3.1 document, derived from the handlers of `api::local` and the
//! types of `crate::wire`: served at `GET /api/openapi.json`, printed by `concord api openapi`.
//!
//! Every operation answers errors in the one shape [`ErrorBody`], with the statuses
//! `NodeError::status` gives; they are added to each operation here, once.

use std::sync::OnceLock;

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, ResponseBuilder};
use utoipa::{OpenApi as _, PartialSchema as _, ToSchema as _};

use axum::response::{IntoResponse as _, Response};

use crate::wire::ErrorBody;

/// Error statuses any operation may answer, with what each means.
const ERRORS: &[(&str, &str)] = &[
    ("400", "The request is malformed or the query is invalid or refused"),
    ("401", "No token, or an unknown one"),
    ("403", "The token's role may not do this, or a policy refused it"),
    ("404", "No such thing"),
    ("408", "The request took longer than the node allows"),
    ("409", "The request conflicts with the state it acts on"),
    ("413", "The request body is too large"),
    ("422", "The query exceeded a limit"),
    ("429", "Rate limited; retry later"),
    ("500", "An error on this node; its detail stays in the node's log"),
    ("502", "An owner failed or could not be reached"),
];

/// The document, built once.
pub fn document() -> &'static Document {
    static DOC: OnceLock<Document> = OnceLock::new();
    DOC.get_or_init(build)
}

/// The document as pretty JSON.
pub fn document_json() -> String {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| document().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")))
        .clone()
}

/// The routes of `api::local` and the document's own, with the info, schemas, error answers
/// and security every operation shares.
fn build() -> Document {
    let mut doc = crate::api::local::Paths::openapi();
    doc.paths.paths.extend(Meta::openapi().paths.paths);
    set_info(&mut doc);
    add_components(&mut doc);
    add_errors_and_security(&mut doc);
    doc
}

/// The document's title, version and description.
fn set_info(doc: &mut Document) {
    doc.info.title = "Concord node: local API".into();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.info.description = Some(
        "The API a member's own users call on their node's local listener. Every route but this \
         document needs `Authorization: Bearer <token>` (`concord token create`); each names the \
         roles it admits. Errors answer as {\"error\": {\"code\", \"message\"}} with a stable code."
            .into(),
    );
}

/// The bearer security scheme, and the error body's schema with every schema it refers to.
fn add_components(doc: &mut Document) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    components.schemas.insert(ErrorBody::name().into_owned(), ErrorBody::schema());
    let mut needed = Vec::new();
    ErrorBody::schemas(&mut needed);
    for (name, schema) in needed {
        components.schemas.entry(name).or_insert(schema);
    }
}

/// Adds the shared error answers to every operation, and the bearer token to each that does not
/// declare its own security.
fn add_errors_and_security(doc: &mut Document) {
    let error = ContentBuilder::new().schema(Some(Ref::from_schema_name(ErrorBody::name()))).build();
    for item in doc.paths.paths.values_mut() {
        for op in operations(item) {
            for (status, description) in ERRORS {
                op.responses.responses.entry((*status).to_owned()).or_insert_with(|| {
                    ResponseBuilder::new()
                        .description(*description)
                        .content("application/json", error.clone())
                        .into()
                });
            }
            // The document itself says `security(())`: no token.
            if op.security.is_none() {
                op.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
            }
        }
    }
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [&mut item.get, &mut item.post, &mut item.put, &mut item.delete, &mut item.patch]
        .into_iter()
        .filter_map(Option::as_mut)
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(get, path = "/api/openapi.json", tag = "meta", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi() -> Response {
    ([("content-type", "application/json"), ("cache-control", "no-store")], document_json()).into_response()
}

/// The document's own route.
#[derive(utoipa::OpenApi)]
#[openapi(paths(openapi))]
struct Meta;
