//! Which cached models make room for a new one under `--cache-size`: the least recently used
//! first, never one that is pinned or protected (loaded, being loaded or served, being pulled).
//! Pure: the cache applies the choice.

use super::CachedModel;

/// The models to remove (least recently used first) so that `need` more bytes fit in `cap`;
/// an error saying why when they cannot.
pub fn evictions<'a>(
    models: &'a [CachedModel],
    need: u64,
    cap: u64,
    protected: &dyn Fn(&CachedModel) -> bool,
) -> Result<Vec<&'a CachedModel>, String> {
    const MB: u64 = 1 << 20;
    let used: u64 = models.iter().map(|m| m.size).sum();
    if used + need <= cap {
        return Ok(Vec::new());
    }
    if need > cap {
        return Err(format!(
            "it needs {} MB and the cache holds at most {} MB (--cache-size)",
            need.div_ceil(MB),
            cap / MB
        ));
    }
    let mut candidates: Vec<&CachedModel> = models
        .iter()
        .filter(|m| !m.pinned && !protected(m))
        .collect();
    candidates.sort_by_key(|m| m.last_used);
    let mut out = Vec::new();
    let mut left = used;
    for m in candidates {
        if left + need <= cap {
            break;
        }
        left -= m.size;
        out.push(m);
    }
    if left + need <= cap {
        return Ok(out);
    }
    let kept: Vec<String> = models
        .iter()
        .filter(|m| m.pinned || protected(m))
        .map(|m| {
            format!(
                "{} ({} MB, {})",
                m.name,
                m.size.div_ceil(MB),
                if m.pinned { "pinned" } else { "in use" }
            )
        })
        .collect();
    Err(format!(
        "it needs {} MB, the cache holds at most {} MB (--cache-size), and what fills it cannot go: {}; unpin one (`hearth models unpin NAME`) or raise --cache-size",
        need.div_ceil(MB),
        cap / MB,
        kept.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_shards::ModelSummary;

    fn model(name: &str, size: u64, last_used: u64, pinned: bool) -> CachedModel {
        CachedModel {
            name: name.into(),
            digest: name.repeat(64)[..64].into(),
            size,
            summary: ModelSummary::default(),
            manifest_root: None,
            pinned,
            last_used,
        }
    }

    #[test]
    fn the_least_recently_used_go_first_and_only_as_many_as_needed() {
        let models = [
            model("a", 40, 3, false),
            model("b", 40, 1, false),
            model("c", 40, 2, false),
        ];
        let none = |_: &CachedModel| false;
        assert!(evictions(&models, 20, 140, &none).unwrap().is_empty());
        let names = |v: Vec<&CachedModel>| v.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(evictions(&models, 30, 140, &none).unwrap()), ["b"]);
        assert_eq!(
            names(evictions(&models, 90, 140, &none).unwrap()),
            ["b", "c"]
        );
    }

    #[test]
    fn pinned_and_protected_models_are_never_chosen() {
        let models = [
            model("old", 50, 1, true),
            model("busy", 50, 2, false),
            model("new", 50, 3, false),
        ];
        let busy = |m: &CachedModel| m.name == "busy";
        let chosen = evictions(&models, 50, 150, &busy).unwrap();
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].name, "new");
        let err = evictions(&models, 100, 150, &busy).unwrap_err();
        assert!(
            err.contains("old (1 MB, pinned)") && err.contains("busy (1 MB, in use)"),
            "{err}"
        );
        assert!(evictions(&models, 200, 150, &busy)
            .unwrap_err()
            .contains("at most"));
    }
}
