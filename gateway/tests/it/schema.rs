//! The schema as tools read it: `cloudsync schema` prints what the repository keeps in
//! `schema.graphql`, the seed's fields keep the seed's signatures, and the introspection query that
//! GraphiQL, Apollo and `gql` send is answered.

use async_graphql::parser::parse_schema;
use async_graphql::parser::types::{BaseType, FieldDefinition, Type, TypeKind, TypeSystemDefinition};
use std::collections::BTreeMap;

use super::{cloudsync, post, serve};

fn printed_schema() -> String {
    let data = std::env::temp_dir().join(format!("cloudsync-schema-{}", uuid::Uuid::new_v4().simple()));
    let output = cloudsync(&data).arg("schema").output().expect("run cloudsync schema");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(!data.exists(), "printing the schema opens no data dir");
    String::from_utf8(output.stdout).expect("utf-8")
}

#[test]
fn the_printed_schema_is_the_one_the_repository_keeps() {
    let kept_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema.graphql");
    let kept = std::fs::read_to_string(&kept_path).expect("schema.graphql at the repository's root");
    let printed = printed_schema();
    if printed != kept {
        let first = printed
            .lines()
            .zip(kept.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| printed.lines().count().min(kept.lines().count()));
        panic!(
            "schema.graphql is not the schema the binary serves (first difference at line {}); \
             update it with `cargo run -p cloudsync-gateway -- schema > schema.graphql`",
            first + 1
        );
    }
}

/// The seed's fields: `(type, field, [(argument, type)], result)`. Arguments added since must be
/// optional; these must keep their types.
type Signature = (&'static str, &'static str, &'static [(&'static str, &'static str)], &'static str);

const SEED: &[Signature] = &[
    ("Query", "me", &[], "User!"),
    (
        "Query",
        "files",
        &[("provider", "String"), ("path", "String"), ("limit", "Int!")],
        "[File!]!",
    ),
    ("Query", "syncStatus", &[("operationId", "ID!")], "SyncOperation!"),
    ("Query", "duplicates", &[("threshold", "Float")], "[DuplicateGroup!]!"),
    (
        "Mutation",
        "register",
        &[("email", "String!"), ("password", "String!")],
        "AuthPayload!",
    ),
    (
        "Mutation",
        "login",
        &[("email", "String!"), ("password", "String!")],
        "AuthPayload!",
    ),
    (
        "Mutation",
        "connectProvider",
        &[("provider", "String!"), ("credentials", "JSON!")],
        "Provider!",
    ),
    ("Mutation", "disconnectProvider", &[("providerId", "ID!")], "Boolean!"),
    (
        "Mutation",
        "moveFiles",
        &[("fileIds", "[ID!]!"), ("targetPath", "String!")],
        "[File!]!",
    ),
    ("Mutation", "deleteFiles", &[("fileIds", "[ID!]!")], "Boolean!"),
    (
        "Mutation",
        "syncFolders",
        &[("source", "FolderInput!"), ("target", "FolderInput!")],
        "SyncOperation!",
    ),
    ("Subscription", "fileChanges", &[("providerId", "ID!")], "FileChange!"),
    ("Subscription", "syncProgress", &[("operationId", "ID!")], "SyncProgress!"),
];

fn type_text(ty: &Type) -> String {
    let base = match &ty.base {
        BaseType::Named(name) => name.to_string(),
        BaseType::List(inner) => format!("[{}]", type_text(inner)),
    };
    if ty.nullable { base } else { format!("{base}!") }
}

#[test]
fn the_seed_fields_keep_their_signatures() {
    let sdl = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema.graphql")).expect("schema.graphql");
    let document = parse_schema(&sdl).expect("schema.graphql parses");
    let mut fields: BTreeMap<(String, String), FieldDefinition> = BTreeMap::new();
    for definition in document.definitions {
        if let TypeSystemDefinition::Type(ty) = definition
            && let TypeKind::Object(object) = ty.node.kind
        {
            for field in object.fields {
                fields.insert((ty.node.name.node.to_string(), field.node.name.node.to_string()), field.node);
            }
        }
    }
    for (ty, name, args, result) in SEED {
        let field = fields
            .get(&((*ty).to_owned(), (*name).to_owned()))
            .unwrap_or_else(|| panic!("{ty}.{name} is gone"));
        assert_eq!(type_text(&field.ty.node), *result, "{ty}.{name}'s type");
        for (arg, arg_type) in *args {
            let found = field
                .arguments
                .iter()
                .find(|a| a.node.name.node == *arg)
                .unwrap_or_else(|| panic!("{ty}.{name} lost its argument {arg}"));
            assert_eq!(type_text(&found.node.ty.node), *arg_type, "{ty}.{name}({arg})");
        }
        for added in field.arguments.iter().filter(|a| !args.iter().any(|(n, _)| a.node.name.node == *n)) {
            assert!(
                added.node.ty.node.nullable || added.node.default_value.is_some(),
                "{ty}.{name}'s added argument {} must be optional",
                added.node.name.node
            );
        }
    }
}

/// graphql-js's `getIntrospectionQuery()` (v16, default options), as GraphiQL sends it.
const STANDARD_INTROSPECTION: &str = "query IntrospectionQuery {
  __schema {
    queryType { name } mutationType { name } subscriptionType { name }
    types { ...FullType }
    directives { name description locations args { ...InputValue } }
  }
}
fragment FullType on __Type {
  kind name description
  fields(includeDeprecated: true) { name description args { ...InputValue } type { ...TypeRef } isDeprecated deprecationReason }
  inputFields { ...InputValue }
  interfaces { ...TypeRef }
  enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason }
  possibleTypes { ...TypeRef }
}
fragment InputValue on __InputValue { name description type { ...TypeRef } defaultValue }
fragment TypeRef on __Type {
  kind name
  ofType { kind name ofType { kind name ofType { kind name ofType { kind name
    ofType { kind name ofType { kind name ofType { kind name } } } } } } }
}";

#[test]
fn schema_tools_can_introspect_the_api() {
    let data = std::env::temp_dir().join(format!("cloudsync-bin-{}", uuid::Uuid::new_v4().simple()));
    let (server, addr) = serve(&data);

    // Apollo's variant asks for the directives' repeatability and scalars' specifications too.
    let apollo = STANDARD_INTROSPECTION
        .replace("directives { name", "directives { name isRepeatable")
        .replace("kind name description\n", "kind name description specifiedByURL\n");
    for query in [STANDARD_INTROSPECTION.to_owned(), apollo] {
        let answer = post(&addr, &serde_json::json!({ "query": query }).to_string());
        assert!(answer.get("errors").is_none(), "{answer}");
        let types = answer["data"]["__schema"]["types"].as_array().expect("types");
        let names: Vec<&str> = types.iter().filter_map(|t| t["name"].as_str()).collect();
        for expected in ["Query", "Mutation", "Subscription", "SyncOperation", "SyncProgress", "SyncMode"] {
            assert!(names.contains(&expected), "{expected} in {names:?}");
        }
        let sync_pair = types.iter().find(|t| t["name"] == "SyncPair").expect("SyncPair");
        let mode = sync_pair["fields"]
            .as_array()
            .expect("fields")
            .iter()
            .find(|f| f["name"] == "mode")
            .expect("mode");
        assert_eq!(mode["type"]["ofType"]["kind"], "ENUM", "SyncPair.mode is the enum its input is");
        let challenge = types.iter().find(|t| t["name"] == "MfaChallenge").expect("MfaChallenge");
        let methods = challenge["fields"]
            .as_array()
            .expect("fields")
            .iter()
            .find(|f| f["name"] == "methods")
            .expect("methods");
        assert_eq!(
            methods["type"]["ofType"]["ofType"]["ofType"]["kind"], "ENUM",
            "a challenge's methods are an enum: {methods}"
        );
    }

    // Introspection has its limit too.
    let deep = format!(
        "{{ __schema {{ types {{ fields {{ type {{ {}name{} }} }} }} }} }}",
        "ofType { ".repeat(20),
        " }".repeat(20)
    );
    let refused = post(&addr, &serde_json::json!({ "query": deep }).to_string());
    assert_eq!(refused["errors"][0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED", "{refused}");
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
}
