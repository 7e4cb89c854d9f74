//! Namespace labels for `allowedRoutes.namespaces.from: Selector`: the
//! Kubernetes `LabelSelector` (matchLabels, matchExpressions with In, NotIn,
//! Exists, DoesNotExist) and the `v1` Namespace documents config sources hand
//! over. Only names and labels are kept.

use std::collections::BTreeMap;

use serde_json::Value;

/// Labels of each known namespace, by name.
pub type NamespaceLabels = BTreeMap<String, BTreeMap<String, String>>;

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed `metav1.LabelSelector`. Every requirement must hold; an empty
/// selector selects every namespace (Kubernetes semantics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// Parse a selector; `Err((field, reason))` with `field` relative to the
    /// selector (`matchExpressions[0].operator`).
    pub fn parse(v: &Value) -> Result<LabelSelector, (String, String)> {
        let Some(obj) = v.as_object() else {
            return Err((String::new(), "must be an object (a LabelSelector)".into()));
        };
        let mut sel = LabelSelector::default();
        for (k, val) in obj {
            match k.as_str() {
                "matchLabels" => {
                    let Some(m) = val.as_object() else {
                        return Err(("matchLabels".into(), "must be a map of strings".into()));
                    };
                    for (lk, lv) in m {
                        let Some(s) = lv.as_str() else {
                            return Err((format!("matchLabels.{lk}"), "must be a string".into()));
                        };
                        sel.match_labels.insert(lk.clone(), s.to_string());
                    }
                }
                "matchExpressions" => {
                    let Some(list) = val.as_array() else {
                        return Err(("matchExpressions".into(), "must be a list".into()));
                    };
                    for (i, e) in list.iter().enumerate() {
                        sel.match_expressions.push(
                            requirement(e)
                                .map_err(|(f, r)| (format!("matchExpressions[{i}]{f}"), r))?,
                        );
                    }
                }
                other => {
                    return Err((
                        other.to_string(),
                        "unknown field of a LabelSelector (matchLabels, matchExpressions)".into(),
                    ))
                }
            }
        }
        Ok(sel)
    }

    /// Whether a namespace with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| match r {
                Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
                Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
                Requirement::Exists(k) => labels.contains_key(k),
                Requirement::DoesNotExist(k) => !labels.contains_key(k),
            })
    }
}

fn requirement(e: &Value) -> Result<Requirement, (String, String)> {
    let Some(obj) = e.as_object() else {
        return Err((
            String::new(),
            "must be an object (key, operator, values)".into(),
        ));
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "key" | "operator" | "values"))
    {
        return Err((
            format!(".{k}"),
            "unknown field (key, operator, values)".into(),
        ));
    }
    let key = match obj.get("key").and_then(Value::as_str) {
        Some(k) if !k.is_empty() => k.to_string(),
        _ => return Err((".key".into(), "required (a label key)".into())),
    };
    let values: Vec<String> = match obj.get("values") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for (i, v) in a.iter().enumerate() {
                match v.as_str() {
                    Some(s) => out.push(s.to_string()),
                    None => return Err((format!(".values[{i}]"), "must be a string".into())),
                }
            }
            out
        }
        Some(_) => return Err((".values".into(), "must be a list of strings".into())),
    };
    let op = obj.get("operator").and_then(Value::as_str).unwrap_or("");
    match op {
        "In" | "NotIn" if values.is_empty() => Err((
            ".values".into(),
            format!("operator {op} needs at least one value"),
        )),
        "Exists" | "DoesNotExist" if !values.is_empty() => Err((
            ".values".into(),
            format!("must be empty with operator {op}"),
        )),
        "In" => Ok(Requirement::In(key, values)),
        "NotIn" => Ok(Requirement::NotIn(key, values)),
        "Exists" => Ok(Requirement::Exists(key)),
        "DoesNotExist" => Ok(Requirement::DoesNotExist(key)),
        o => Err((
            ".operator".into(),
            format!("{o:?} is not an operator (In, NotIn, Exists, DoesNotExist)"),
        )),
    }
}

/// Whether `value` is a `v1` Namespace document.
pub fn is_namespace(value: &Value) -> bool {
    value.get("apiVersion").and_then(Value::as_str) == Some("v1")
        && value.get("kind").and_then(Value::as_str) == Some("Namespace")
}

/// Name and labels of a `v1` Namespace document (everything else in it is
/// ignored: only labels matter to route attachment). `Err` names the field.
pub fn namespace_labels(
    value: &Value,
) -> Result<(String, BTreeMap<String, String>), (String, String)> {
    let meta = value.get("metadata");
    let name = match meta.and_then(|m| m.get("name")).and_then(Value::as_str) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => return Err(("metadata.name".into(), "required".into())),
    };
    let mut labels = BTreeMap::new();
    match meta.and_then(|m| m.get("labels")) {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let Some(s) = v.as_str() else {
                    return Err((format!("metadata.labels.{k}"), "must be a string".into()));
                };
                labels.insert(k.clone(), s.to_string());
            }
        }
        Some(_) => return Err(("metadata.labels".into(), "must be a map of strings".into())),
    }
    Ok((name, labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selector_operators() {
        let s = LabelSelector::parse(&json!({
            "matchLabels": {"team": "a"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "stage"]},
                {"key": "tier", "operator": "NotIn", "values": ["db"]},
                {"key": "shared", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist"},
            ]
        }))
        .unwrap();
        let ok = labels(&[("team", "a"), ("env", "prod"), ("shared", "")]);
        assert!(s.matches(&ok));
        let mut l = ok.clone();
        l.insert("team".into(), "b".into());
        assert!(!s.matches(&l), "matchLabels");
        let mut l = ok.clone();
        l.insert("env".into(), "dev".into());
        assert!(!s.matches(&l), "In");
        let mut l = ok.clone();
        l.insert("tier".into(), "db".into());
        assert!(!s.matches(&l), "NotIn");
        let mut l = ok.clone();
        l.remove("shared");
        assert!(!s.matches(&l), "Exists");
        let mut l = ok.clone();
        l.insert("legacy".into(), "1".into());
        assert!(!s.matches(&l), "DoesNotExist");
        assert!(LabelSelector::parse(&json!({}))
            .unwrap()
            .matches(&BTreeMap::new()));
    }

    #[test]
    fn bad_selectors_name_the_field() {
        let e = LabelSelector::parse(
            &json!({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]}),
        )
        .unwrap_err();
        assert_eq!(e.0, "matchExpressions[0].operator");
        let e =
            LabelSelector::parse(&json!({"matchExpressions": [{"key": "a", "operator": "In"}]}))
                .unwrap_err();
        assert_eq!(e.0, "matchExpressions[0].values");
        let e = LabelSelector::parse(&json!({"matchLabels": {"a": 1}})).unwrap_err();
        assert_eq!(e.0, "matchLabels.a");
    }

    /// Conversion from the golden fixture: team-a (labels match) attaches,
    /// team-b and the Gateway's own namespace infra (labels do not) do not.
    #[test]
    fn selector_decides_which_namespaces_attach() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/golden/gateway_api_ns_selector.yaml"
        );
        let text = std::fs::read_to_string(path).expect("fixture");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("yaml");
        let mut ns = NamespaceLabels::new();
        let mut objects = Vec::new();
        for d in &docs[1..] {
            if is_namespace(d) {
                let (n, l) = namespace_labels(d).expect("namespace");
                ns.insert(n, l);
            } else {
                objects.push(super::super::parse_object("fixture", d).expect("valid"));
            }
        }
        let accepted = |ns: &NamespaceLabels, route: &str| {
            let conv =
                super::super::convert::convert_with_namespaces(&objects, ns, "cluster.local", None);
            let st = conv
                .status
                .iter()
                .find(|s| s.kind == "HTTPRoute" && s.name == route)
                .expect("route status");
            let c = &st.parents[0].conditions[0];
            assert_eq!(c.kind, "Accepted");
            let vs = conv
                .objects
                .iter()
                .any(|o| o.meta().name == format!("{route}-istio-autogenerated-k8s-gateway"));
            (c.reason, vs)
        };
        assert_eq!(accepted(&ns, "a"), ("Accepted", true));
        assert_eq!(accepted(&ns, "b"), ("NotAllowedByListeners", false));
        assert_eq!(accepted(&ns, "own"), ("NotAllowedByListeners", false));
        // Relabelling team-b admits its route; labelling team-a legacy drops it.
        let mut relabelled = ns.clone();
        relabelled.insert(
            "team-b".into(),
            labels(&[("shared-gateway-access", "true"), ("env", "stage")]),
        );
        relabelled
            .get_mut("team-a")
            .unwrap()
            .insert("legacy".into(), "yes".into());
        assert_eq!(accepted(&relabelled, "b"), ("Accepted", true));
        assert_eq!(accepted(&relabelled, "a"), ("NotAllowedByListeners", false));
    }
}
