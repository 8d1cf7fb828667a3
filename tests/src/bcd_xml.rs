//! Reads a registry hive, and a BCD store in particular, back through `hivexml` (Debian's
//! libhivex-bin): an implementation independent of recast-imager's, so that the PXE and imager
//! tests check the store a disk really holds rather than recast's idea of it.
//!
//! hivexml writes `<node name="…">` per key and `<value type="…" key="…">` per value. Newer
//! versions (1.3.23, Debian 12) put the value in a `value` attribute and add `<byte_runs>`;
//! older ones put it in the element's text. Both are read.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use base64::Engine as _;

/// A value as hivexml types it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// REG_SZ ("string"), REG_EXPAND_SZ ("expand"), REG_LINK ("link"): the text, without the NUL.
    String(String),
    /// REG_MULTI_SZ ("string-list"), without the empty string hivex reports for the final NUL.
    Strings(Vec<String>),
    /// REG_DWORD ("int32").
    Int32(i32),
    /// REG_QWORD ("int64").
    Int64(i64),
    /// Everything hivexml writes as base64, decoded: REG_BINARY ("binary"), REG_NONE ("none"),
    /// strings that are not valid UTF-16 ("bad-string"), resource lists, unknown types.
    Bytes { type_: String, bytes: Vec<u8> },
}

impl Value {
    /// The bytes of a REG_BINARY value.
    pub fn binary(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes { type_, bytes } if type_ == "binary" => Some(bytes),
            _ => None,
        }
    }

    pub fn string(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn strings(&self) -> Option<&[String]> {
        match self {
            Value::Strings(s) => Some(s),
            _ => None,
        }
    }
}

/// A key with its values (by name; "" is the default value) and subkeys (by name, as stored).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Key {
    pub name: String,
    pub values: BTreeMap<String, Value>,
    pub subkeys: Vec<Key>,
}

impl Key {
    /// The subkey named `name`, matched case-insensitively as the registry does.
    pub fn subkey(&self, name: &str) -> Option<&Key> {
        self.subkeys
            .iter()
            .find(|k| k.name.eq_ignore_ascii_case(name))
    }

    /// The key at a backslash-separated path below this one.
    pub fn path(&self, path: &str) -> Option<&Key> {
        path.split('\\')
            .filter(|p| !p.is_empty())
            .try_fold(self, |k, name| k.subkey(name))
    }
}

/// A BCD object: its `Description\Type` and its elements by id (`11000001`, lower case).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Object {
    pub type_: Option<u32>,
    pub elements: BTreeMap<String, Value>,
}

/// A BCD store: the root `Description` key's values and the objects by `{guid}` (lower case).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bcd {
    pub description: BTreeMap<String, Value>,
    pub objects: BTreeMap<String, Object>,
}

impl Bcd {
    /// The element `id` (`"11000001"`) of the object `guid` (any case, braces required).
    pub fn element(&self, guid: &str, id: &str) -> Option<&Value> {
        self.objects
            .get(&guid.to_ascii_lowercase())?
            .elements
            .get(&id.to_ascii_lowercase())
    }
}

/// The hive's root key, from hivexml's output.
pub fn parse_hive(xml: &str) -> Result<Key, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("hivexml output: {e}"))?;
    let root = doc
        .root_element()
        .children()
        .find(|n| n.has_tag_name("node"))
        .ok_or("hivexml output has no root <node>")?;
    key(root)
}

fn key(node: roxmltree::Node) -> Result<Key, String> {
    let mut k = Key {
        name: node.attribute("name").unwrap_or_default().to_string(),
        ..Key::default()
    };
    for child in node.children().filter(|c| c.is_element()) {
        match child.tag_name().name() {
            "node" => k.subkeys.push(key(child)?),
            "value" => {
                // The default value has `default="1"` and no key.
                let name = child.attribute("key").unwrap_or_default().to_string();
                let v = value(child).map_err(|e| format!("{}\\{name}: {e}", k.name))?;
                k.values.insert(name, v);
            }
            _ => {}
        }
    }
    Ok(k)
}

fn value(node: roxmltree::Node) -> Result<Value, String> {
    let type_ = node.attribute("type").ok_or("a value without a type")?;
    // The value attribute (newer hivexml) or the element's own text (older).
    let text = || -> String {
        node.attribute("value")
            .map(str::to_string)
            .unwrap_or_else(|| {
                node.children()
                    .filter(|c| c.is_text())
                    .filter_map(|c| c.text())
                    .collect()
            })
    };
    if node.attribute("encoding") == Some("base64") {
        // libxml2 may wrap long base64 runs.
        let b64: String = text().chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("base64: {e}"))?;
        return Ok(Value::Bytes {
            type_: type_.into(),
            bytes,
        });
    }
    Ok(match type_ {
        "string" | "expand" | "link" => Value::String(text()),
        "string-list" => {
            let mut strings: Vec<String> = node
                .children()
                .filter(|c| c.has_tag_name("string"))
                .map(|c| c.text().unwrap_or_default().to_string())
                .collect();
            while strings.last().is_some_and(String::is_empty) {
                strings.pop();
            }
            Value::Strings(strings)
        }
        "int32" => Value::Int32(text().trim().parse().map_err(|e| format!("int32: {e}"))?),
        "int64" => Value::Int64(text().trim().parse().map_err(|e| format!("int64: {e}"))?),
        other => return Err(format!("value type {other:?} without base64")),
    })
}

/// The BCD store in hivexml's output.
pub fn parse(xml: &str) -> Result<Bcd, String> {
    let root = parse_hive(xml)?;
    let mut bcd = Bcd::default();
    if let Some(d) = root.subkey("Description") {
        bcd.description = d.values.clone();
    }
    for o in root
        .subkey("Objects")
        .map(|k| &k.subkeys[..])
        .unwrap_or(&[])
    {
        let type_ = match o.path("Description").and_then(|d| d.values.get("Type")) {
            // hivexml prints a DWORD as signed; object types have the top bit clear anyway.
            Some(Value::Int32(t)) => Some(*t as u32),
            Some(other) => return Err(format!("{}: Type is {other:?}", o.name)),
            None => None,
        };
        let mut elements = BTreeMap::new();
        for e in o.subkey("Elements").map(|k| &k.subkeys[..]).unwrap_or(&[]) {
            if let Some(v) = e.values.get("Element") {
                elements.insert(e.name.to_ascii_lowercase(), v.clone());
            }
        }
        bcd.objects
            .insert(o.name.to_ascii_lowercase(), Object { type_, elements });
    }
    Ok(bcd)
}

/// Runs `hivexml` on the hive file and parses its output as a BCD store.
pub fn read(hive: &Path) -> Result<Bcd, String> {
    parse(&hivexml(hive)?)
}

/// `hivexml HIVE`'s output.
pub fn hivexml(hive: &Path) -> Result<String, String> {
    let out = Command::new("hivexml")
        .arg(hive)
        .output()
        .map_err(|e| format!("hivexml {}: {e}", hive.display()))?;
    if !out.status.success() {
        return Err(format!(
            "hivexml {} failed ({}): {}",
            hive.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("hivexml output: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What hivexml 1.3.23 printed for a hive with these values (byte runs shortened).
    const NEW: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<hive><mtime>2024-01-01T00:00:00Z</mtime><node name="NewStoreRoot" root="1"><mtime>2024-01-01T00:00:00Z</mtime>
<node name="Description"><value type="string" key="KeyName" value="BCD00000000"><byte_runs/></value><value type="int32" key="System" value="1"/></node>
<node name="Objects">
<node name="{9DEA862C-5CDD-4E70-ACC1-F32B344D4795}">
<node name="Description"><value type="int32" key="Type" value="269484034"/></node>
<node name="Elements">
<node name="11000001"><value type="binary" encoding="base64" key="Element" value="AQI="><byte_runs><byte_run file_offset="8592" len="31"/></byte_runs></value></node>
<node name="24000001"><value type="string-list" key="Element"><string>{a}</string><string>{b}</string><string></string></value></node>
<node name="12000004"><value type="string" key="Element" value="A&amp;&lt;"/></node>
<node name="12000005"/>
</node></node></node>
<node name="Other"><value type="binary" encoding="base64" default="1" value=""/><value type="int64" key="Q" value="-2"/><value type="bad-string" encoding="base64" key="B" value="AA=="/></node>
</node></hive>"#;

    #[test]
    fn reads_values_from_attributes() {
        let bcd = parse(NEW).unwrap();
        assert_eq!(
            bcd.description.get("KeyName"),
            Some(&Value::String("BCD00000000".into()))
        );
        assert_eq!(bcd.description.get("System"), Some(&Value::Int32(1)));
        let bootmgr = "{9dea862c-5cdd-4e70-acc1-f32b344d4795}";
        assert_eq!(bcd.objects[bootmgr].type_, Some(0x1010_0002));
        assert_eq!(
            bcd.element(bootmgr, "11000001").and_then(Value::binary),
            Some(&[1u8, 2][..])
        );
        assert_eq!(
            bcd.element(&bootmgr.to_uppercase(), "24000001")
                .and_then(Value::strings),
            Some(&["{a}".to_string(), "{b}".to_string()][..])
        );
        assert_eq!(
            bcd.element(bootmgr, "12000004").and_then(Value::string),
            Some("A&<")
        );
        // A key without an Element value is not an element.
        assert_eq!(bcd.element(bootmgr, "12000005"), None);
        let root = parse_hive(NEW).unwrap();
        let other = root.path(r"\other").unwrap();
        assert_eq!(
            other.values[""],
            Value::Bytes {
                type_: "binary".into(),
                bytes: vec![]
            }
        );
        assert_eq!(other.values["Q"], Value::Int64(-2));
        assert_eq!(other.values["B"].binary(), None);
        assert_eq!(
            root.path(r"Objects\{9dea862c-5cdd-4e70-acc1-f32b344d4795}\Elements")
                .map(|k| k.subkeys.len()),
            Some(4)
        );
    }

    #[test]
    fn reads_values_from_text_as_older_hivexml_writes_them() {
        let old = r#"<hive><node name="R" root="1"><node name="Objects"><node name="{x}">
<node name="Description"><value type="int32" key="Type">270532611</value></node>
<node name="Elements"><node name="11000001"><value type="binary" encoding="base64" key="Element">AAEC
AwQ=</value></node></node></node></node></node></hive>"#;
        let bcd = parse(old).unwrap();
        assert_eq!(bcd.objects["{x}"].type_, Some(0x1020_0003));
        assert_eq!(
            bcd.element("{x}", "11000001").and_then(Value::binary),
            Some(&[0u8, 1, 2, 3, 4][..])
        );
    }

    #[test]
    fn malformed_output_is_an_error() {
        assert!(parse("not xml").is_err());
        assert!(parse("<hive/>").is_err());
        assert!(
            parse(r#"<hive><node name="R"><value type="int32" key="x" value="y"/></node></hive>"#)
                .is_err()
        );
        assert!(parse(r#"<hive><node name="R"><value type="binary" encoding="base64" key="x" value="!"/></node></hive>"#).is_err());
        assert!(parse(r#"<hive><node name="R"><node name="Objects"><node name="{x}"><node name="Description"><value type="string" key="Type" value="1"/></node></node></node></node></hive>"#).is_err());
    }
}
