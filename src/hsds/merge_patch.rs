//! JSON merge patch (RFC 7386): how a `PATCH` body changes a stored JSON value. An object in the patch
//! is merged key by key, a `null` member removes that key, and anything else (a string, a number, an
//! array, or an object patched onto a non-object) replaces the target outright.

use serde_json::{Map, Value};

/// Applies `patch` to `target` in place, following RFC 7386.
///
/// Arrays are never merged element by element: a patch array replaces the target value whole. A `null`
/// at the top level of the patch turns the target into `null`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target_members) = target else {
        // Just made an object above.
        return;
    };
    for (key, patch_value) in patch_members {
        if patch_value.is_null() {
            target_members.remove(key);
        } else {
            let slot = target_members.entry(key.clone()).or_insert(Value::Null);
            merge_patch(slot, patch_value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patched(target: Value, patch: Value) -> Value {
        let mut out = target;
        merge_patch(&mut out, &patch);
        out
    }

    #[test]
    fn changes_a_member_and_removes_one_set_to_null() {
        let target = json!({"title": "Hello", "author": {"given": "Ann", "family": "Lee"}, "tags": ["a", "b"]});
        let patch = json!({"title": "Bye", "author": {"family": null}, "tags": ["c"], "phone": "555-0100"});
        assert_eq!(
            patched(target, patch),
            json!({"title": "Bye", "author": {"given": "Ann"}, "tags": ["c"], "phone": "555-0100"})
        );
    }

    #[test]
    fn scalar_members_are_replaced_or_added() {
        assert_eq!(patched(json!({"a": "b"}), json!({"a": "c"})), json!({"a": "c"}));
        assert_eq!(patched(json!({"a": "b"}), json!({"b": "c"})), json!({"a": "b", "b": "c"}));
    }

    #[test]
    fn null_members_remove_keys_and_missing_keys_stay_missing() {
        assert_eq!(patched(json!({"a": "b"}), json!({"a": null})), json!({}));
        assert_eq!(patched(json!({"a": "b", "b": "c"}), json!({"a": null})), json!({"b": "c"}));
        assert_eq!(patched(json!({"e": null}), json!({"a": 1})), json!({"e": null, "a": 1}));
        assert_eq!(patched(json!({}), json!({"a": {"bb": {"ccc": null}}})), json!({"a": {"bb": {}}}));
    }

    #[test]
    fn arrays_are_replaced_whole() {
        assert_eq!(patched(json!({"a": ["b"]}), json!({"a": "c"})), json!({"a": "c"}));
        assert_eq!(patched(json!({"a": "c"}), json!({"a": ["b"]})), json!({"a": ["b"]}));
        assert_eq!(patched(json!({"a": [{"b": "c"}]}), json!({"a": [1]})), json!({"a": [1]}));
        assert_eq!(patched(json!(["a", "b"]), json!(["c", "d"])), json!(["c", "d"]));
        assert_eq!(patched(json!({"a": "b"}), json!(["c"])), json!(["c"]));
    }

    #[test]
    fn nested_objects_merge_recursively() {
        assert_eq!(patched(json!({"a": {"b": "c"}}), json!({"a": {"b": "d", "c": null}})), json!({"a": {"b": "d"}}));
    }

    #[test]
    fn non_object_targets_become_objects_or_are_replaced() {
        assert_eq!(patched(json!(["a", "b"]), json!({"a": "b"})), json!({"a": "b"}));
        assert_eq!(patched(json!("text"), json!({"a": null})), json!({}));
        assert_eq!(patched(json!({"a": "foo"}), json!(null)), json!(null));
        assert_eq!(patched(json!({"a": "foo"}), json!("bar")), json!("bar"));
    }

    #[test]
    fn empty_patch_leaves_the_target_alone() {
        let target = json!({"a": 1, "b": [2]});
        assert_eq!(patched(target.clone(), json!({})), target);
    }
}

/// The laws of RFC 7396 over arbitrary JSON targets and patches.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::hsds::strategies::{json_object, json_value};

    fn patched(target: &Value, patch: &Value) -> Value {
        let mut out = target.clone();
        merge_patch(&mut out, patch);
        out
    }

    /// Whether a value holds a `null` inside any object, at any depth (arrays are opaque to merge patch,
    /// but nulls at the top level of nested objects are removals).
    fn has_object_nulls(value: &Value) -> bool {
        match value {
            Value::Object(map) => map.values().any(|v| v.is_null() || has_object_nulls(v)),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn a_patch_that_is_not_an_object_replaces_the_target(target in json_value(), patch in json_value()) {
            prop_assume!(!patch.is_object());
            prop_assert_eq!(patched(&target, &patch), patch);
        }

        #[test]
        fn applying_a_patch_twice_changes_nothing_more(target in json_value(), patch in json_value()) {
            let once = patched(&target, &patch);
            prop_assert_eq!(patched(&once, &patch), once);
        }

        #[test]
        fn members_follow_the_patch_and_others_stay(target in json_object(), patch in json_object()) {
            let target = Value::Object(target);
            let out = patched(&target, &Value::Object(patch.clone()));
            let out_members = out.as_object().expect("an object patch gives an object");
            for (key, value) in &patch {
                if value.is_null() {
                    prop_assert!(!out_members.contains_key(key), "{key} was set to null");
                } else {
                    let before = target.get(key).cloned().unwrap_or(Value::Null);
                    prop_assert_eq!(&out_members[key], &patched(&before, value), "member {}", key);
                }
            }
            for (key, value) in target.as_object().into_iter().flatten() {
                if !patch.contains_key(key) {
                    prop_assert_eq!(&out_members[key], value, "untouched member {}", key);
                }
            }
            prop_assert!(out_members.keys().all(|k| patch.contains_key(k) || target.get(k).is_some()));
        }

        #[test]
        fn the_empty_patch_is_the_identity_on_objects(target in json_object()) {
            let target = Value::Object(target);
            prop_assert_eq!(patched(&target, &serde_json::json!({})), target);
        }

        #[test]
        fn a_null_free_patch_applied_to_nothing_is_itself(patch in json_value()) {
            prop_assume!(!has_object_nulls(&patch));
            prop_assert_eq!(patched(&Value::Null, &patch), patch.clone());
            prop_assert_eq!(patched(&serde_json::json!({}), &patch), patch);
        }

        #[test]
        fn the_result_holds_no_null_the_patch_asked_to_remove(target in json_value(), patch in json_object()) {
            let out = patched(&target, &Value::Object(patch.clone()));
            // Every member the patch sets to null is gone; nested objects likewise.
            fn removed(out: &Value, patch: &serde_json::Map<String, Value>) -> bool {
                patch.iter().all(|(k, v)| match v {
                    Value::Null => out.get(k).is_none(),
                    Value::Object(inner) => out.get(k).is_some_and(|o| removed(o, inner)),
                    _ => true,
                })
            }
            prop_assert!(removed(&out, &patch), "{out}");
        }
    }
}
