//! Topic names, by the rule of each record format: capture names a table's
//! topic with it, and the sink checks with the same rule that a record's
//! topic carries the table its body names (a producer allowed to write one
//! topic must not write another table's rows).

/// Kafka's longest topic name.
pub const MAX_LENGTH: usize = 249;

/// How a format turns `<prefix>.<schema>.<table>` into a topic name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// walhouse's: each part kept if Kafka can carry it, else its
    /// characters replaced by `_` and a hash of the original appended, so
    /// two tables never share a topic.
    Walhouse,
    /// Debezium's: every character Kafka cannot carry becomes `_`, the
    /// whole name cut at [`MAX_LENGTH`].
    Debezium,
}

/// The topic of `schema.table` under `prefix`.
pub fn name(rule: Rule, prefix: &str, schema: &str, table: &str) -> String {
    match rule {
        Rule::Walhouse => format!("{prefix}.{}.{}", walhouse_part(schema), walhouse_part(table)),
        Rule::Debezium => debezium(&format!("{prefix}.{schema}.{table}"))
            .chars()
            .take(MAX_LENGTH)
            .collect(),
    }
}

/// How the topic of one table ends, whatever the prefix: what the sink
/// checks a record's topic against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicEnd {
    rule: Rule,
    /// `.<schema>.<table>` as the rule writes them (before any cut).
    suffix: String,
    /// The length of its `.<schema>` part.
    schema_len: usize,
}

impl TopicEnd {
    pub fn of(rule: Rule, schema: &str, table: &str) -> Self {
        let (schema, table) = match rule {
            Rule::Walhouse => (walhouse_part(schema), walhouse_part(table)),
            Rule::Debezium => (debezium(schema), debezium(table)),
        };
        TopicEnd {
            rule,
            schema_len: schema.len() + 1,
            suffix: format!(".{schema}.{table}"),
        }
    }

    /// Any topic (records whose topic names no table).
    pub fn any() -> Self {
        TopicEnd {
            rule: Rule::Walhouse,
            suffix: String::new(),
            schema_len: 0,
        }
    }

    /// Whether `topic` is the table's. A Debezium name cut at
    /// [`MAX_LENGTH`] must still show the whole schema and the table's
    /// first character.
    pub fn is_end_of(&self, topic: &str) -> bool {
        if topic.ends_with(&self.suffix) {
            return true;
        }
        self.rule == Rule::Debezium
            && topic.len() == MAX_LENGTH
            && (self.schema_len + 2..self.suffix.len())
                .any(|k| self.suffix.get(..k).is_some_and(|s| topic.ends_with(s)))
    }
}

/// A part of a walhouse topic name (`[A-Za-z0-9_-]`), with a hash when
/// characters were replaced.
pub fn walhouse_part(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out == s && !s.is_empty() {
        out
    } else {
        format!("{out}_{}", short_hash(s))
    }
}

/// Debezium's replacement: characters other than `[A-Za-z0-9._-]` become `_`.
fn debezium(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// FNV-1a: a stable short hash for disambiguating sanitised names.
pub fn short_hash(s: &str) -> String {
    let mut h: u32 = 0x811C_9DC5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_names_and_recognises_its_topics() {
        for rule in [Rule::Walhouse, Rule::Debezium] {
            for (schema, table) in [("public", "orders"), ("public", "Order Items"), ("Sales Dept", "a.b")] {
                let topic = name(rule, "walhouse", schema, table);
                assert!(TopicEnd::of(rule, schema, table).is_end_of(&topic), "{rule:?} {topic}");
                assert!(
                    !TopicEnd::of(rule, schema, "orderz").is_end_of(&topic),
                    "{rule:?} {topic}"
                );
            }
        }
        assert_eq!(
            name(Rule::Debezium, "p", "public", "Order Items"),
            "p.public.Order_Items"
        );
        assert!(name(Rule::Walhouse, "p", "public", "Order Items").starts_with("p.public.Order_Items_"));
        // walhouse's rule never gives two tables one topic; Debezium's may.
        assert_ne!(
            name(Rule::Walhouse, "p", "public", "Order Items"),
            name(Rule::Walhouse, "p", "public", "Order_Items")
        );
    }

    #[test]
    fn a_debezium_name_cut_at_the_limit_still_carries_its_table() {
        let topic = name(Rule::Debezium, &"p".repeat(240), "public", "long_table");
        assert_eq!(topic.len(), MAX_LENGTH);
        assert!(TopicEnd::of(Rule::Debezium, "public", "long_table").is_end_of(&topic));
        // Not by walhouse's rule, which never cuts.
        assert!(!TopicEnd::of(Rule::Walhouse, "public", "long_table").is_end_of(&topic));
        // Another table's topic is never taken for this one's.
        assert!(!TopicEnd::of(Rule::Debezium, "public", "other").is_end_of(&topic));
        // Cut inside the schema: the table is not shown at all.
        let cut = name(Rule::Debezium, &"p".repeat(245), "public", "t");
        assert!(!TopicEnd::of(Rule::Debezium, "public", "t").is_end_of(&cut));
        assert!(TopicEnd::any().is_end_of(&cut));
    }
}
