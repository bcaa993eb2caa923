//! The persisted form of one write in the embedded log.
//!
//! Layout of format version 1 (all integers little-endian):
//! `[version: u8 = 1][flags: u8, bit 0 = delete][create_revision: i64][prev_revision: i64]`
//! `[key_len: u32][key: key_len bytes][value: the rest]`.
//! A delete record carries an empty value; the deleted state is the record at `prev_revision`.
//! Golden files in `testdata/record/` pin the format.

use bytes::Bytes;

use crate::{Error, Result, Revision};

const VERSION_1: u8 = 1;
const FLAG_DELETE: u8 = 1;
const HEADER_LEN: usize = 1 + 1 + 8 + 8 + 4;

/// One entry of the write log, keyed in the log table by its own revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub key: String,
    pub value: Bytes,
    pub create_revision: Revision,
    /// The revision of the previous version of this key, `0` for a create.
    pub prev_revision: Revision,
    pub deleted: bool,
}

/// The fixed part of a record, decoded without copying the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub key: String,
    pub create_revision: Revision,
    pub prev_revision: Revision,
    pub deleted: bool,
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.key.len() + self.value.len());
        out.push(VERSION_1);
        out.push(if self.deleted { FLAG_DELETE } else { 0 });
        out.extend_from_slice(&self.create_revision.to_le_bytes());
        out.extend_from_slice(&self.prev_revision.to_le_bytes());
        let key_len = u32::try_from(self.key.len()).expect("keys are far shorter than 4 GiB");
        out.extend_from_slice(&key_len.to_le_bytes());
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(&self.value);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Record> {
        let (header, value_start) = decode_header(bytes)?;
        Ok(Record {
            key: header.key,
            value: Bytes::copy_from_slice(&bytes[value_start..]),
            create_revision: header.create_revision,
            prev_revision: header.prev_revision,
            deleted: header.deleted,
        })
    }
}

/// Decodes the header and returns where the value starts.
pub(crate) fn decode_header(bytes: &[u8]) -> Result<(RecordHeader, usize)> {
    let corrupt = |what: &str| Error::Backend(format!("corrupt log record: {what}"));
    if bytes.len() < HEADER_LEN {
        return Err(corrupt("too short"));
    }
    if bytes[0] != VERSION_1 {
        return Err(corrupt(&format!("unknown format version {}", bytes[0])));
    }
    let deleted = bytes[1] & FLAG_DELETE != 0;
    let int = |at: usize| i64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let create_revision = int(2);
    let prev_revision = int(10);
    let key_len = u32::from_le_bytes(bytes[18..22].try_into().expect("4 bytes")) as usize;
    let key_end = HEADER_LEN + key_len;
    if bytes.len() < key_end {
        return Err(corrupt("key runs past the end"));
    }
    let key = std::str::from_utf8(&bytes[HEADER_LEN..key_end])
        .map_err(|_| corrupt("key is not utf-8"))?
        .to_owned();
    Ok((
        RecordHeader {
            key,
            create_revision,
            prev_revision,
            deleted,
        },
        key_end,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str, record: &Record) {
        let path = format!("{}/testdata/record/{name}", env!("CARGO_MANIFEST_DIR"));
        let encoded = record.encode();
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &encoded).unwrap();
        }
        let expected = std::fs::read(&path).expect("golden file present");
        assert_eq!(
            encoded, expected,
            "format of {name} changed; bump the version instead"
        );
        assert_eq!(&Record::decode(&expected).unwrap(), record);
    }

    #[test]
    fn v1_put_record_is_stable() {
        golden(
            "v1_put.bin",
            &Record {
                key: "/registry/pods/default/web".into(),
                value: Bytes::from_static(b"{\"kind\":\"Pod\"}"),
                create_revision: 7,
                prev_revision: 9,
                deleted: false,
            },
        );
    }

    #[test]
    fn v1_delete_record_is_stable() {
        golden(
            "v1_delete.bin",
            &Record {
                key: "/registry/pods/default/web".into(),
                value: Bytes::new(),
                create_revision: 7,
                prev_revision: 12,
                deleted: true,
            },
        );
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        assert!(Record::decode(b"").is_err());
        assert!(Record::decode(&[2; 40]).is_err());
        let mut bytes = Record {
            key: "k".into(),
            value: Bytes::new(),
            create_revision: 1,
            prev_revision: 0,
            deleted: false,
        }
        .encode();
        bytes[18] = 200;
        assert!(Record::decode(&bytes).is_err());
    }
}
