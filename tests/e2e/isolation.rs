//! Issue 5: tenant isolation, proven field by field. User A has data of every kind; user B calls
//! every query, mutation and subscription the schema has (read from the schema itself, so a new
//! field is covered the day it is added) with A's ids, and again with ids that do not exist. B must
//! see nothing of A's, the two answers must be the same, and A's data must be unchanged at the end.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::harness::{Harness, on_both_backends, over_socket};
use crate::sync::{pair_keeping, run, two_folders, versions_of, write};

on_both_backends!(
    no_field_lets_one_user_see_or_change_anothers_data,
    hostile_input_at_every_argument_gets_a_clear_error_and_changes_nothing,
);

const INTROSPECTION: &str = "{ __schema { queryType { name } mutationType { name } subscriptionType { name } \
    types { name kind enumValues { name } inputFields { name type { ...T } } fields { name args { name type { ...T } } type { ...T } } } } } \
    fragment T on __Type { kind name ofType { kind name ofType { kind name ofType { kind name } } } }";

/// Fields whose answer may differ for the victim's address, and why.
const EXEMPT: [(&str, &str); 1] = [(
    "register",
    "an address can be registered once, so signing up tells whether it is taken (as on most services)",
)];

/// Fields that end the caller's own session: run last, they concern only B.
const LAST: [&str; 1] = ["logout"];

/// A's identifiers, by the kind of thing they name.
struct Victim {
    email: String,
    ids: BTreeMap<&'static str, String>,
    /// Strings that must never appear in B's answers.
    secrets: Vec<String>,
}

/// What a type reference is, unwrapped: (named type, is a list, is required).
fn unwrap(ty: &Value) -> (String, bool, bool) {
    let mut ty = ty;
    let (mut list, mut required) = (false, false);
    loop {
        match ty["kind"].as_str() {
            Some("NON_NULL") if !list => required = true,
            Some("LIST") => list = true,
            Some("NON_NULL") => {}
            _ => return (ty["name"].as_str().unwrap_or_default().to_owned(), list, required),
        }
        ty = &ty["ofType"];
    }
}

struct Schema {
    types: BTreeMap<String, Value>,
}

impl Schema {
    fn kind(&self, name: &str) -> &str {
        self.types.get(name).and_then(|t| t["kind"].as_str()).unwrap_or("SCALAR")
    }

    /// Every scalar field of `name`, and those of its object fields one level down.
    fn selection(&self, name: &str, depth: usize) -> String {
        let Some(ty) = self.types.get(name) else { return String::new() };
        if !matches!(ty["kind"].as_str(), Some("OBJECT")) {
            return String::new();
        }
        let mut parts = vec!["__typename".to_owned()];
        for field in ty["fields"].as_array().into_iter().flatten() {
            if field["args"].as_array().is_some_and(|a| !a.is_empty()) {
                continue;
            }
            let (inner, _, _) = unwrap(&field["type"]);
            let field_name = field["name"].as_str().unwrap_or_default();
            match self.kind(&inner) {
                "OBJECT" if depth > 0 => parts.push(format!("{field_name} {{ {} }}", self.selection(&inner, depth - 1))),
                "OBJECT" => {}
                _ => parts.push(field_name.to_owned()),
            }
        }
        parts.join(" ")
    }

    /// A value for an argument or input field of type `ty`: A's id where the name says which kind
    /// of thing it names (`victim`), else an id nobody has; plausible values for the rest.
    fn value(&self, field: &str, name: &str, ty: &Value, ids: &dyn Fn(&str, &str) -> String) -> Value {
        let (inner, list, _) = unwrap(ty);
        let single = match inner.as_str() {
            "ID" => Value::String(ids(field, name)),
            "String" => Value::String(match name {
                "path" | "targetPath" => "docs".into(),
                // An empty search matches every file the caller may see.
                "query" => String::new(),
                "email" => ids(field, "email"),
                "password" | "currentPassword" | "newPassword" => "not the password".into(),
                "phone" => "+447700900123".into(),
                "code" => "123456".into(),
                "mfaToken" | "refreshToken" | "token" => ids(field, name),
                _ => "anything".into(),
            }),
            "Int" => json!(10),
            "Float" => json!(1.5),
            "Boolean" => json!(false),
            "JSON" => json!({}),
            "DateTime" => json!("2030-01-01T00:00:00Z"),
            other => match self.kind(other) {
                "ENUM" => self.types[other]["enumValues"][0]["name"].clone(),
                "INPUT_OBJECT" => {
                    let mut object = Map::new();
                    for input in self.types[other]["inputFields"].as_array().into_iter().flatten() {
                        let input_name = input["name"].as_str().unwrap_or_default();
                        object.insert(input_name.to_owned(), self.value(field, input_name, &input["type"], ids));
                    }
                    Value::Object(object)
                }
                _ => Value::Null,
            },
        };
        if list { json!([single]) } else { single }
    }

    /// A document calling `field` of `root` with every argument as a variable, and the variables.
    fn request(&self, operation: &str, field: &Value, ids: &dyn Fn(&str, &str) -> String) -> (String, Value) {
        let name = field["name"].as_str().unwrap_or_default();
        let mut declarations = Vec::new();
        let mut arguments = Vec::new();
        let mut variables = Map::new();
        for arg in field["args"].as_array().into_iter().flatten() {
            let arg_name = arg["name"].as_str().unwrap_or_default();
            declarations.push(format!("${arg_name}: {}", type_text(&arg["type"])));
            arguments.push(format!("{arg_name}: ${arg_name}"));
            variables.insert(arg_name.to_owned(), self.value(name, arg_name, &arg["type"], ids));
        }
        let (inner, _, _) = unwrap(&field["type"]);
        let selection = self.selection(&inner, 1);
        let selection = if selection.is_empty() {
            String::new()
        } else {
            format!(" {{ {selection} }}")
        };
        let declarations = if declarations.is_empty() {
            String::new()
        } else {
            format!("({})", declarations.join(", "))
        };
        let arguments = if arguments.is_empty() {
            String::new()
        } else {
            format!("({})", arguments.join(", "))
        };
        (
            format!("{operation}{declarations} {{ {name}{arguments}{selection} }}"),
            Value::Object(variables),
        )
    }
}

/// Whether an argument is an input object (whose fields may name the victim's things).
fn is_input_object(schema: &Schema, ty: &Value) -> bool {
    let (inner, _, _) = unwrap(ty);
    schema.kind(&inner) == "INPUT_OBJECT"
}

/// The schema as introspection shows it, and its types by name.
async fn introspect(h: &Harness, token: &str) -> (Value, Schema) {
    let introspection = h.ok(Some(token), INTROSPECTION, json!({})).await;
    let schema = Schema {
        types: introspection["__schema"]["types"]
            .as_array()
            .expect("types")
            .iter()
            .map(|t| (t["name"].as_str().unwrap_or_default().to_owned(), t.clone()))
            .collect(),
    };
    (introspection, schema)
}

fn type_text(ty: &Value) -> String {
    match ty["kind"].as_str() {
        Some("NON_NULL") => format!("{}!", type_text(&ty["ofType"])),
        Some("LIST") => format!("[{}]", type_text(&ty["ofType"])),
        _ => ty["name"].as_str().unwrap_or_default().to_owned(),
    }
}

/// Which of A's ids an argument names, by the field and argument names.
fn kind_of(field: &str, arg: &str) -> &'static str {
    match (field, arg) {
        (_, "providerId" | "provider" | "providerIds") => "provider",
        (_, "fileId" | "fileIds") => "file",
        (_, "pairId") => "pair",
        (_, "operationId") => "operation",
        (_, "versionId") => "version",
        (_, "userId") => "user",
        ("revokeSession", "id") => "session",
        ("revokeApiToken", "id") => "api_token",
        ("removePasskey", "id") => "passkey",
        // A refresh token is a bearer secret, not an id: whoever holds the victim's is the victim.
        (_, "email") => "email",
        _ => "other",
    }
}

/// The answer with every id of `ids` replaced by its kind, so that "provider <A's id> not found"
/// and "provider <unknown id> not found" compare equal.
fn normalised(response: &Value, ids: &BTreeMap<&'static str, String>) -> String {
    let mut text = json!({
        "errors": response["errors"].as_array().map(|errors| errors.iter().map(|e| json!({ "code": e["extensions"]["code"], "message": e["message"] })).collect::<Vec<_>>()),
        "data": response["data"],
    })
    .to_string();
    for (kind, id) in ids {
        text = text.replace(id.as_str(), &format!("<{kind}>"));
    }
    text
}

async fn victim(h: &Harness) -> (Victim, String) {
    let seed: Vec<(&str, &[u8])> = vec![("docs/secret-plan.txt", b"v1\n"), ("photos/a.jpg", b"jpeg")];
    let (token, source, a, target, _) = two_folders(h, "victim@example.org", &seed).await;
    let pair = pair_keeping(h, &token, &source, &target, 3).await;
    write(&a, "docs/secret-plan.txt", b"v2\n");
    let operation = run(h, &token, &pair).await["id"].as_str().expect("operation").to_owned();
    let version = versions_of(h, &token, &target, "docs/secret-plan.txt").await[0]["id"]
        .as_str()
        .expect("a kept version")
        .to_owned();
    let files = h.files(&token, &source).await;
    let file = files["docs/secret-plan.txt"]["id"].as_str().expect("file").to_owned();
    let me = h.ok(Some(&token), "{ me { id } sessions { id } }", json!({})).await;
    let api = h
        .ok(
            Some(&token),
            "mutation { createApiToken(name: \"victim's\", scopes: [\"files:read\"]) { token info { id } } }",
            json!({}),
        )
        .await;
    let login = h
        .ok(
            None,
            "mutation { login(email: \"victim@example.org\", password: \"correct horse battery\") { refreshToken } }",
            json!({}),
        )
        .await;
    let mut ids = BTreeMap::new();
    ids.insert("provider", source.clone());
    ids.insert("provider2", target);
    ids.insert("file", file);
    ids.insert("pair", pair);
    ids.insert("operation", operation);
    ids.insert("version", version);
    ids.insert("user", me["me"]["id"].as_str().expect("id").to_owned());
    ids.insert("session", me["sessions"][0]["id"].as_str().expect("session").to_owned());
    ids.insert("api_token", api["createApiToken"]["info"]["id"].as_str().expect("id").to_owned());
    ids.insert("passkey", "victims-passkey".to_owned());
    ids.insert(
        "refresh_token",
        login["login"]["refreshToken"].as_str().expect("refresh").to_owned(),
    );
    let secrets = vec![
        "victim@example.org".to_owned(),
        "secret-plan".to_owned(),
        a.display().to_string(),
        ids["provider"].clone(),
        ids["file"].clone(),
        ids["pair"].clone(),
        ids["user"].clone(),
    ];
    (
        Victim {
            email: "victim@example.org".into(),
            ids,
            secrets,
        },
        token,
    )
}

/// What A can see of its own data: compared before and after B's attempts.
async fn snapshot(h: &Harness, token: &str, victim: &Victim) -> Value {
    let query = "query($p: String) { me { id email } providers { id status displayName } files(provider: $p) { id path checksum } \
        syncPairs { id } apiTokens { id } }";
    h.ok(Some(token), query, json!({ "p": victim.ids["provider"] })).await
}

async fn no_field_lets_one_user_see_or_change_anothers_data(h: &Harness) {
    let (victim, victim_token) = victim(h).await;
    let before = snapshot(h, &victim_token, &victim).await;
    let (mut intruder, _) = h.register("intruder@example.org").await;

    let (introspection, schema) = introspect(h, &intruder).await;
    let root = |kind: &str| -> Vec<Value> {
        let name = introspection["__schema"][kind]["name"].as_str().expect("root type");
        schema.types[name]["fields"].as_array().expect("fields").clone()
    };
    let mut checked = 0;
    let mut fields: Vec<(&str, Value)> = root("queryType").into_iter().map(|f| ("query", f)).collect();
    let mut mutations: Vec<Value> = root("mutationType");
    mutations.sort_by_key(|f| LAST.contains(&f["name"].as_str().unwrap_or_default()));
    fields.extend(mutations.into_iter().map(|f| ("mutation", f)));
    let unknown: BTreeMap<&'static str, String> = victim
        .ids
        .keys()
        .map(|kind| {
            let value = match *kind {
                "refresh_token" => format!("csr1.{}.{}", Uuid::new_v4().simple(), "A".repeat(43)),
                "passkey" => "nobodys-passkey".to_owned(),
                _ => Uuid::new_v4().to_string(),
            };
            (*kind, value)
        })
        .collect();
    for (operation, field) in &fields {
        let name = field["name"].as_str().unwrap_or_default().to_owned();
        let theirs = |field: &str, arg: &str| match kind_of(field, arg) {
            "email" => victim.email.clone(),
            "other" => Uuid::new_v4().to_string(),
            kind => victim.ids[kind].clone(),
        };
        // A fresh address each time: one that nobody has (registering it in one call must not
        // make it known to the next).
        let nobody = format!("nobody-{}@example.org", Uuid::new_v4().simple());
        let nobodys = |field: &str, arg: &str| match kind_of(field, arg) {
            "email" => nobody.clone(),
            "other" => Uuid::new_v4().to_string(),
            kind => unknown[kind].clone(),
        };
        let (document, variables) = schema.request(operation, field, &theirs);
        let against_victim = h.gql(Some(&intruder), &document, variables).await;
        let (document, variables) = schema.request(operation, field, &nobodys);
        let against_nobody = h.gql(Some(&intruder), &document, variables).await;
        let shown = against_victim.to_string();
        for secret in &victim.secrets {
            assert!(!shown.contains(secret.as_str()), "{name} showed the intruder {secret:?}: {shown}");
        }
        let names_victims = field["args"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|arg| kind_of(&name, arg["name"].as_str().unwrap_or_default()) != "other" || is_input_object(&schema, &arg["type"]));
        if names_victims && !EXEMPT.iter().any(|(exempt, _)| *exempt == name) {
            assert_eq!(
                normalised(&against_victim, &victim.ids).replace("victim@example.org", "<email>"),
                normalised(&against_nobody, &unknown).replace(nobody.as_str(), "<email>"),
                "{name}: the intruder can tell the victim's ids from unknown ones"
            );
        }
        checked += 1;
        // A field that ended the intruder's own session (logout): sign in again.
        if h.gql(Some(&intruder), "{ me { id } }", json!({})).await.get("errors").is_some() {
            intruder = h
                .ok(
                    None,
                    "mutation { login(email: \"intruder@example.org\", password: \"correct horse battery\") { accessToken } }",
                    json!({}),
                )
                .await["login"]["accessToken"]
                .as_str()
                .expect("token")
                .to_owned();
        }
    }
    assert!(
        checked == fields.len() && checked >= 50,
        "every query and mutation was tried: {checked}"
    );

    // Subscriptions: refused for the victim's ids exactly as for unknown ones.
    for field in root("subscriptionType") {
        let name = field["name"].as_str().unwrap_or_default().to_owned();
        let mut answers = Vec::new();
        for ids in [&victim.ids, &unknown] {
            let pick = |field: &str, arg: &str| match kind_of(field, arg) {
                "other" | "email" => Uuid::new_v4().to_string(),
                kind => ids[kind].clone(),
            };
            let (document, variables) = schema.request("subscription", &field, &pick);
            answers.push(normalised(&subscribe_once(h, &intruder, &document, variables).await, ids));
        }
        assert_eq!(
            answers[0], answers[1],
            "{name}: the intruder can tell the victim's ids from unknown ones"
        );
        assert!(
            answers[0].contains("NOT_FOUND") || answers[0].contains("BAD_USER_INPUT"),
            "{name}: {}",
            answers[0]
        );
    }

    // Nothing of the victim's changed, and the victim still works.
    assert_eq!(snapshot(h, &victim_token, &victim).await, before);
    let refreshed = h
        .gql(
            None,
            "mutation($r: String!) { refresh(refreshToken: $r) { accessToken } }",
            json!({ "r": victim.ids["refresh_token"] }),
        )
        .await;
    assert!(refreshed.get("errors").is_none(), "the victim's session survived: {refreshed}");
}

/// The first message a subscription sends (its data or its error), over graphql-transport-ws.
async fn subscribe_once(h: &Harness, token: &str, document: &str, variables: Value) -> Value {
    let mut socket = h.socket(token).await;
    over_socket(&mut socket, "1", document, variables).await
}

/// Values an attacker would try in an argument.
const HOSTILE: [&str; 8] = [
    "' OR '1'='1",
    "\"; DROP TABLE events; --",
    "../../../../etc/passwd",
    "<script>alert(1)</script>",
    "\u{0}\u{1}\u{7f}",
    "%00%2e%2e%2f",
    "ｆｕｌｌｗｉｄｔｈ \u{202e}rtl",
    "{\"$gt\": \"\"}",
];

/// The error codes a refusal may carry: each says what is wrong, none is a failure of the server.
const CLEAR: [&str; 8] = [
    "BAD_USER_INPUT",
    "NOT_FOUND",
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "CONFLICT",
    "ALREADY_EXISTS",
    "GRAPHQL_VALIDATION_FAILED",
    "RATE_LIMITED",
];

async fn hostile_input_at_every_argument_gets_a_clear_error_and_changes_nothing(h: &Harness) {
    let (victim, token) = victim(h).await;
    let before = snapshot(h, &token, &victim).await;
    let (introspection, schema) = introspect(h, &token).await;
    let mut tried = 0;
    for (operation, root) in [("query", "queryType"), ("mutation", "mutationType")] {
        let name = introspection["__schema"][root]["name"].as_str().expect("root");
        for field in schema.types[name]["fields"].as_array().expect("fields") {
            let field_name = field["name"].as_str().unwrap_or_default();
            if LAST.contains(&field_name) || field_name == "changePassword" || field_name == "revokeSession" {
                continue; // these end or change the caller's own sessions
            }
            for arg in field["args"].as_array().into_iter().flatten() {
                let (inner, _, _) = unwrap(&arg["type"]);
                if !matches!(inner.as_str(), "String" | "ID") {
                    continue;
                }
                let arg_name = arg["name"].as_str().unwrap_or_default().to_owned();
                for hostile in HOSTILE {
                    let pick = |_: &str, name: &str| {
                        if name == arg_name {
                            hostile.to_owned()
                        } else {
                            Uuid::new_v4().to_string()
                        }
                    };
                    let (document, mut variables) = schema.request(operation, field, &pick);
                    // Strings that are not ids get the hostile value too.
                    if inner == "String" {
                        variables[arg_name.as_str()] = if unwrap(&arg["type"]).1 { json!([hostile]) } else { json!(hostile) };
                    }
                    let answer = h.gql(Some(&token), &document, variables).await;
                    for error in answer["errors"].as_array().into_iter().flatten() {
                        let code = error["extensions"]["code"].as_str().unwrap_or("none");
                        assert!(
                            CLEAR.contains(&code),
                            "{field_name}({arg_name}: {hostile:?}) failed unclearly: {answer}"
                        );
                    }
                    tried += 1;
                }
            }
        }
    }
    assert!(tried > 200, "{tried}");
    // Oversized and deeply nested documents, and garbage instead of GraphQL.
    let deep = format!(
        "query {{ __schema {{ types {{ fields {{ type {{ {}name{} }} }} }} }} }}",
        "ofType { ".repeat(20),
        " }".repeat(20)
    );
    let deep_answer = h.gql(Some(&token), &deep, json!({})).await;
    assert_eq!(
        deep_answer["errors"][0]["extensions"]["code"],
        json!("GRAPHQL_VALIDATION_FAILED"),
        "{deep_answer}"
    );
    let wide = format!(
        "{{ {} }}",
        (0..2000).map(|i| format!("a{i}: me {{ id }}")).collect::<Vec<_>>().join(" ")
    );
    let wide_answer = h.gql(Some(&token), &wide, json!({})).await;
    assert_eq!(
        wide_answer["errors"][0]["extensions"]["code"],
        json!("GRAPHQL_VALIDATION_FAILED"),
        "too complex"
    );
    let huge = "x".repeat(2 * 1024 * 1024);
    // A client of its own: the server may close the connection before the upload ends, and a
    // pooled connection closed that way must not fail the requests after it.
    let sent = reqwest::Client::new()
        .post(format!("{}/graphql", h.url))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(json!({ "query": format!("{{ me {{ id }} }} # {huge}") }).to_string())
        .send()
        .await;
    match sent {
        Ok(response) => assert_eq!(response.status().as_u16(), 413, "over max_body_bytes"),
        Err(err) => assert!(err.is_request() || err.is_body(), "refused mid-upload, not failed otherwise: {err}"),
    }
    for garbage in ["{", "not json", "{\"query\": 5}", "{\"query\": \"{ me { id \"}"] {
        let response = h
            .client
            .post(format!("{}/graphql", h.url))
            .header("content-type", "application/json")
            .body(garbage)
            .send()
            .await
            .expect("post");
        assert_eq!(response.status().as_u16(), 400, "{garbage}");
    }
    // Random credentials: a few hundred strings shaped more or less like tokens.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(std::process::id());
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet: Vec<char> = "ABCxyz019-_.=+/ eyJcst1csr1\\\"'".chars().collect();
    for round in 0..300 {
        let length = usize::try_from(next() % 400).unwrap_or(0);
        let mut token: String = (0..length)
            .map(|_| alphabet[usize::try_from(next() % alphabet.len() as u64).unwrap_or(0)])
            .collect();
        if round % 3 == 0 {
            token = format!("eyJ{token}.{token}.{token}");
        } else if round % 3 == 1 {
            token = format!("cst1.{}.{}.{token}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        }
        let response = h
            .client
            .post(format!("{}/graphql", h.url))
            .header("authorization", format!("Bearer {token}"))
            .json(&json!({ "query": "{ me { id } }" }))
            .send()
            .await
            .expect("post");
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            status == 200 && answer["errors"][0]["extensions"]["code"] == json!("UNAUTHENTICATED"),
            "{token:?}: {status} {answer}"
        );
    }
    // Nothing changed, and the server still answers.
    assert_eq!(snapshot(h, &token, &victim).await, before);
}
