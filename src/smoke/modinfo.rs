//! TEMPORARY: the few `.modinfo` fields smoke needs (name, vermagic, depends), until the one
//! module reader (`verify::module::Module`, branch `verify`) lands. kmx must have ONE module
//! reader: when it does, this file is deleted and its two callers switch to it.

use std::path::Path;

use crate::error::{Error, Result};

/// What smoke needs to know about a `.ko` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModInfo {
    /// The module name the kernel uses (`name=`, else the file name with `-` as `_`).
    pub name: String,
    pub vermagic: Option<String>,
    /// `depends=`: module names this one needs loaded first.
    pub depends: Vec<String>,
}

/// Read `.modinfo` from a `.ko` file.
pub fn read(path: &Path) -> Result<ModInfo> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    let bad = |why: String| {
        Error::failed(format!("not a kernel module: {why}"))
            .at(path)
            .hint("pass .ko files built by kbuild (or a directory containing them)")
    };
    let elf = goblin::elf::Elf::parse(&bytes).map_err(|e| bad(e.to_string()))?;
    let section = elf
        .section_headers
        .iter()
        .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(".modinfo"))
        .ok_or_else(|| bad("it has no .modinfo section".into()))?;
    let start = section.sh_offset as usize;
    let end = start.saturating_add(section.sh_size as usize);
    let data = bytes
        .get(start..end)
        .ok_or_else(|| bad(".modinfo lies outside the file".into()))?;
    Ok(parse(data, path))
}

fn parse(data: &[u8], path: &Path) -> ModInfo {
    let mut name = None;
    let mut vermagic = None;
    let mut depends = Vec::new();
    for entry in data.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let text = String::from_utf8_lossy(entry);
        let Some((key, value)) = text.split_once('=') else {
            continue;
        };
        match key {
            "name" => name = Some(value.to_string()),
            "vermagic" => vermagic = Some(value.to_string()),
            "depends" => depends.extend(
                value
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(str::to_string),
            ),
            _ => {}
        }
    }
    let name = name.unwrap_or_else(|| {
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        file.split('.').next().unwrap_or_default().replace('-', "_")
    });
    ModInfo {
        name,
        vermagic,
        depends,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_and_padding_ignored() {
        let data =
            b"alias=x\0depends=crc-itu-t,foo\0\0\0name=hello\0vermagic=6.1.0-50-amd64 SMP \0";
        let m = parse(data, Path::new("/x/hello.ko"));
        assert_eq!(m.name, "hello");
        assert_eq!(m.vermagic.as_deref(), Some("6.1.0-50-amd64 SMP "));
        assert_eq!(m.depends, ["crc-itu-t", "foo"]);
        let m = parse(b"depends=\0", Path::new("/x/my-mod.ko"));
        assert_eq!(m.name, "my_mod");
        assert!(m.depends.is_empty());
    }
}
