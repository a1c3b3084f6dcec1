//! The depth limit: how deeply a document's fields may nest, fragments included.
//!
//! async-graphql's own limit counts introspection like any other field, and the introspection
//! query that GraphiQL, Apollo and `gql` send (graphql-js's `getIntrospectionQuery`) nests 13
//! levels deep (`__schema → types → fields → args → type`, then seven `ofType`), so it refused
//! every schema-driven tool. Here a field under `__schema` or `__type` may nest a little deeper
//! than data may; any other document is held to [`MAX_DEPTH`].

use std::collections::HashMap;

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};

/// How deeply the fields of a query, mutation or subscription may nest.
pub const MAX_DEPTH: usize = 12;
/// How deeply introspection may nest: graphql-js's standard query needs 13 levels, and its
/// `typeDepth` option (graphql-js 17) asks for up to 15.
pub const MAX_INTROSPECTION_DEPTH: usize = 16;
/// Fragments spread inside one another, at most, before a document counts as too deep.
const MAX_FRAGMENT_CHAIN: usize = 64;

/// Whether any operation of `document` nests deeper than its limit.
pub fn too_deep(document: &ExecutableDocument) -> bool {
    let mut walk = Walk {
        document,
        heights: HashMap::new(),
        chain: Vec::new(),
        broken: false,
    };
    for (_, operation) in document.operations.iter() {
        for selection in &operation.node.selection_set.node.items {
            let (height, introspection) = match &selection.node {
                Selection::Field(field) => {
                    let name = field.node.name.node.as_str();
                    (
                        1 + walk.height(&field.node.selection_set.node),
                        name == "__schema" || name == "__type",
                    )
                }
                Selection::FragmentSpread(_) | Selection::InlineFragment(_) => (
                    walk.height(&SelectionSet {
                        items: vec![selection.clone()],
                    }),
                    false,
                ),
            };
            let limit = if introspection { MAX_INTROSPECTION_DEPTH } else { MAX_DEPTH };
            if walk.broken || height > limit {
                return true;
            }
        }
    }
    false
}

struct Walk<'a> {
    document: &'a ExecutableDocument,
    /// Each fragment's height, once known, so that a fragment spread many times costs one walk.
    heights: HashMap<String, usize>,
    /// The fragments being walked, innermost last.
    chain: Vec<String>,
    /// A fragment chain longer than [`MAX_FRAGMENT_CHAIN`] was found.
    broken: bool,
}

impl Walk<'_> {
    /// How many levels of fields `set` holds below it.
    fn height(&mut self, set: &SelectionSet) -> usize {
        let mut height = 0;
        for selection in &set.items {
            let below = match &selection.node {
                Selection::Field(field) => 1 + self.height(&field.node.selection_set.node),
                Selection::InlineFragment(fragment) => self.height(&fragment.node.selection_set.node),
                Selection::FragmentSpread(spread) => self.fragment(spread.node.fragment_name.node.as_str()),
            };
            height = height.max(below);
            if self.broken {
                break;
            }
        }
        height
    }

    fn fragment(&mut self, name: &str) -> usize {
        if let Some(&known) = self.heights.get(name) {
            return known;
        }
        // A cycle (which validation refuses afterwards) or an unknown fragment adds nothing here.
        if self.chain.iter().any(|walking| walking == name) {
            return 0;
        }
        let Some(fragment) = self.document.fragments.get(&async_graphql::Name::new(name)) else {
            return 0;
        };
        if self.chain.len() >= MAX_FRAGMENT_CHAIN {
            self.broken = true;
            return 0;
        }
        self.chain.push(name.to_owned());
        let height = self.height(&fragment.node.selection_set.node);
        self.chain.pop();
        self.heights.insert(name.to_owned(), height);
        height
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deep(query: &str) -> bool {
        too_deep(&async_graphql::parser::parse_query(query).expect("parses"))
    }

    fn nested(levels: usize) -> String {
        let mut query = "name".to_owned();
        for _ in 0..levels {
            query = format!("ofType {{ {query} }}");
        }
        format!("{{ __schema {{ types {{ fields {{ type {{ {query} }} }} }} }} }}")
    }

    #[test]
    fn introspection_passes_where_data_of_that_depth_does_not() {
        // __schema, types, fields, type, 8 × ofType, name: 13 levels.
        assert!(!deep(&nested(8)));
        let data = format!("{{ {}x {} }}", "a { ".repeat(12), "} ".repeat(12));
        assert!(deep(&data), "13 levels of data");
        let data = format!("{{ {}x {} }}", "a { ".repeat(11), "} ".repeat(11));
        assert!(!deep(&data), "12 levels of data");
    }

    #[test]
    fn introspection_has_a_limit_too() {
        assert!(!deep(&nested(11)), "16 levels");
        assert!(deep(&nested(12)), "17 levels");
    }

    #[test]
    fn fragments_count_where_they_are_spread() {
        let query = format!(
            "{{ a {{ ...F }} }} fragment F on T {{ {}c {} }}",
            "b { ".repeat(11),
            "} ".repeat(11)
        );
        assert!(deep(&query), "1 + 12 levels through a fragment");
        let query = "{ __schema { ...F } } fragment F on __Schema { types { ...G } } fragment G on __Type { name }";
        assert!(!deep(query));
        // A cycle is left for validation to refuse; it must not hang or overflow here.
        assert!(!deep("{ a { ...F } } fragment F on T { ...G } fragment G on T { ...F }"));
    }

    #[test]
    fn a_fragment_spread_many_times_is_walked_once() {
        let mut query = String::from("{ a { ...F0 } }");
        for level in 0..10 {
            let spreads: String = (0..50).map(|i| format!("x{i}: b {{ ...F{} }} ", level + 1)).collect();
            query.push_str(&format!(" fragment F{level} on T {{ {spreads} }}"));
        }
        query.push_str(" fragment F10 on T { c }");
        assert!(!deep(&query), "11 + 1 levels");
    }

    #[test]
    fn a_long_chain_of_fragments_is_too_deep() {
        let mut query = String::from("{ a { ...F0 } }");
        for level in 0..100 {
            query.push_str(&format!(" fragment F{level} on T {{ ...F{} }}", level + 1));
        }
        query.push_str(" fragment F100 on T { c }");
        assert!(deep(&query));
    }
}
