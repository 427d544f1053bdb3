//! Where each row of a batch came from, packed: the key and raw bytes of
//! every row in one buffer, topic and file names once each. Origins are
//! read only when the warehouse refuses a row (to make it a dead letter),
//! so keeping one allocation per row, three per Kafka message, cost the
//! sink more than anything it did with them.

use super::Origin;

/// An origin as the loop has it: borrowed from the message being handled.
#[derive(Clone, Copy, Debug, Default)]
pub struct OriginRef<'a> {
    /// What fed it: `cdc`, `companies`, `insolvency_csv`.
    pub source: &'static str,
    pub topic: Option<&'a str>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub file: Option<&'a str>,
    pub line: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub raw: Option<&'a [u8]>,
}

impl OriginRef<'_> {
    pub fn to_owned(&self) -> Origin {
        Origin {
            source: self.source,
            topic: self.topic.map(str::to_owned),
            partition: self.partition,
            offset: self.offset,
            file: self.file.map(str::to_owned),
            line: self.line,
            key: self.key.map(<[u8]>::to_vec),
            raw: self.raw.map(<[u8]>::to_vec),
        }
    }

    /// Its bytes as held in memory, for batching by bytes.
    pub fn weight(&self) -> usize {
        self.key.map_or(0, <[u8]>::len) + self.raw.map_or(0, <[u8]>::len)
    }
}

impl Origin {
    pub fn borrow(&self) -> OriginRef<'_> {
        OriginRef {
            source: self.source,
            topic: self.topic.as_deref(),
            partition: self.partition,
            offset: self.offset,
            file: self.file.as_deref(),
            line: self.line,
            key: self.key.as_deref(),
            raw: self.raw.as_deref(),
        }
    }
}

/// Bytes `start..end` of the shared buffer.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: usize,
    end: usize,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    source: &'static str,
    /// Index into `names`.
    topic: Option<u32>,
    file: Option<u32>,
    partition: Option<i32>,
    offset: Option<i64>,
    line: Option<i64>,
    key: Option<Span>,
    raw: Option<Span>,
}

/// The origins of a table's rows, in row order.
#[derive(Debug, Default)]
pub struct Origins {
    entries: Vec<Entry>,
    bytes: Vec<u8>,
    names: Vec<String>,
}

impl Origins {
    pub fn push(&mut self, o: OriginRef<'_>) {
        let entry = Entry {
            source: o.source,
            topic: o.topic.map(|t| self.name(t)),
            file: o.file.map(|f| self.name(f)),
            partition: o.partition,
            offset: o.offset,
            line: o.line,
            key: o.key.map(|k| self.keep(k)),
            raw: o.raw.map(|r| self.keep(r)),
        };
        self.entries.push(entry);
    }

    /// The index of `name`: a batch holds few topics and files, and rows
    /// of one come together, so the last ones are looked at first.
    fn name(&mut self, name: &str) -> u32 {
        match self.names.iter().rposition(|n| n == name) {
            Some(i) => i as u32,
            None => {
                self.names.push(name.to_owned());
                (self.names.len() - 1) as u32
            }
        }
    }

    fn keep(&mut self, bytes: &[u8]) -> Span {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        Span {
            start,
            end: self.bytes.len(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Row `i`'s origin, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<Origin> {
        let e = self.entries.get(i)?;
        let name = |n: Option<u32>| n.and_then(|n| self.names.get(n as usize)).cloned();
        let bytes = |s: Option<Span>| s.and_then(|s| self.bytes.get(s.start..s.end)).map(<[u8]>::to_vec);
        Some(Origin {
            source: e.source,
            topic: name(e.topic),
            partition: e.partition,
            offset: e.offset,
            file: name(e.file),
            line: e.line,
            key: bytes(e.key),
            raw: bytes(e.raw),
        })
    }

    /// Row `i`'s topic, partition and offset, if it came from Kafka.
    pub fn kafka(&self, i: usize) -> Option<(&str, i32, i64)> {
        let e = self.entries.get(i)?;
        let topic = self.names.get(e.topic? as usize)?;
        Some((topic, e.partition?, e.offset?))
    }

    /// Each row's offset, in order.
    pub fn offsets(&self) -> impl Iterator<Item = Option<i64>> + '_ {
        self.entries.iter().map(|e| e.offset)
    }

    /// Keeps the origins whose `keep` is true (missing ones are kept). The
    /// bytes of those dropped stay until the batch goes: rows are set
    /// aside rarely, and few at a time.
    pub fn retain(&mut self, keep: &[bool]) {
        let mut i = 0;
        self.entries.retain(|_| {
            i += 1;
            keep.get(i - 1).copied().unwrap_or(true)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_read_back_as_pushed_after_rows_are_set_aside() {
        let given: Vec<Origin> = (0..5)
            .map(|i| Origin {
                source: if i == 3 { "insolvency_csv" } else { "cdc" },
                topic: (i != 3).then(|| format!("topic{}", i % 2)),
                partition: Some(i as i32),
                offset: Some(100 + i),
                file: (i == 3).then(|| "f.csv".to_owned()),
                line: (i == 3).then_some(7),
                key: (i != 2).then(|| vec![i as u8; i as usize]),
                raw: Some(format!("raw {i}").into_bytes()),
            })
            .collect();
        let mut origins = Origins::default();
        for o in &given {
            origins.push(o.borrow());
        }
        assert_eq!(origins.len(), 5);
        let read: Vec<Origin> = (0..5).filter_map(|i| origins.get(i)).collect();
        assert_eq!(read, given);
        assert_eq!(origins.get(5), None);
        origins.retain(&[true, false, true, true, false]);
        let kept: Vec<Origin> = (0..origins.len()).filter_map(|i| origins.get(i)).collect();
        assert_eq!(kept, vec![given[0].clone(), given[2].clone(), given[3].clone()]);
        assert_eq!(
            origins.offsets().collect::<Vec<_>>(),
            vec![Some(100), Some(102), Some(103)]
        );
        assert_eq!(origins.kafka(1), Some(("topic0", 2, 102)));
        assert_eq!(origins.kafka(2), None, "a file's line");
        assert_eq!(origins.kafka(3), None, "past the end");
        assert_eq!(given[1].borrow().to_owned(), given[1]);
        assert_eq!(given[1].borrow().weight(), given[1].weight());
    }
}
