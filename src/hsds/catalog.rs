//! The HSDS 3.1 table catalog: every table hsda stores, its fields and their types, how tables reference
//! each other and which related objects a table's JSON form nests. Everything else (validation, the store,
//! compiled documents, CSV import/export, the OpenAPI document) reads HSDS structure from here.

pub use super::catalog_data::TABLES;

/// The value type of a scalar HSDS field, as the JSON Schema and the tabular data package describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Uuid,
    Text,
    Uri,
    Email,
    Number,
    Integer,
    Boolean,
    Date,
    DateTime,
    Time,
    Enum(&'static [&'static str]),
}

impl FieldType {
    /// Whether its values are numbers or booleans, not text of some kind (a CSV cell of it is parsed).
    pub fn is_typed(self) -> bool {
        matches!(self, FieldType::Number | FieldType::Integer | FieldType::Boolean)
    }
}

#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    pub ty: FieldType,
    pub required: bool,
    /// The table this field points at (`*` for the polymorphic `attribute.link_id` and `metadata.resource_id`).
    pub references: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NestedKind {
    /// An array of child rows that point at this row (`service.phones` holds phones whose `service_id` is it).
    Many,
    /// One related row this row points at (`service.organization` via `service.organization_id`).
    One,
}

#[derive(Debug)]
pub struct Nested {
    pub key: &'static str,
    pub kind: NestedKind,
    pub table: &'static str,
}

#[derive(Debug)]
pub struct Table {
    /// Singular HSDS name, also the event object name (`phone`).
    pub name: &'static str,
    /// The API path segment (`phones`).
    pub plural: &'static str,
    /// The file of this table in a tabular data package.
    pub csv_file: &'static str,
    pub fields: &'static [Field],
    pub nested: &'static [Nested],
}

/// The four documents that embed other tables; a change to an embedded row updates them.
pub const ROOTS: [&str; 4] = ["service", "organization", "location", "service_at_location"];

/// Tables that stand on their own: deleting a row they reference is refused rather than cascaded.
const ENTITIES: [&str; 8] =
    ["organization", "service", "location", "program", "taxonomy", "taxonomy_term", "unit", "meta_table_description"];

impl Table {
    pub fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn is_root(&self) -> bool {
        ROOTS.contains(&self.name)
    }

    /// Whether rows of this table are details owned by the rows they point at (deleted with them).
    pub fn is_detail(&self) -> bool {
        !ENTITIES.contains(&self.name)
    }

    /// Whether a row of `child` pointing at a row of `self` through `field` is deleted with that row: details
    /// nested in it (a service's phones), rows attached to any row (attributes, metadata), and rows whose
    /// purpose is to link two others (a service_at_location, an attribute's term). A detail that only uses
    /// the row (a capacity measured in a unit) keeps it from being deleted instead.
    pub fn owns(&self, child: &Table, field: &Field) -> bool {
        child.is_detail() && (self.nests_through(child, field) || field.references == Some("*") || child.is_link())
    }

    /// Whether a row of this table only links two others (a service_at_location, an attribute and its term):
    /// it goes when either end goes.
    pub fn is_link(&self) -> bool {
        ["service_at_location", "attribute"].contains(&self.name)
    }

    /// Whether rows of `child` pointing at a row of `self` through `field` are nested in its JSON form (a
    /// service's `phones`, by `phone.service_id`).
    pub fn nests_through(&self, child: &Table, field: &Field) -> bool {
        self.nested.iter().any(|n| {
            n.kind == NestedKind::Many
                && n.table == child.name
                && self.back_reference(n).map(|f| f.name) == Some(field.name)
        })
    }

    /// For a polymorphic reference (`references == Some("*")`: `attribute.link_id`, `metadata.resource_id`),
    /// the field of the same row that names the table it points into (`link_entity`, `resource_type`).
    pub fn entity_field(&self, field: &Field) -> Option<&'static str> {
        if field.references != Some("*") {
            return None;
        }
        self.fields.iter().find(|f| matches!(f.name, "link_entity" | "resource_type")).map(|f| f.name)
    }

    /// Whether `row` of this table, whose `field` holds some id, points at the row of `parent` with that id.
    /// Ids are unique per table only, so a polymorphic reference says which table it means: an attribute of
    /// a phone is not one of the service that happens to have the phone's id. One that names no table (rows
    /// written before hsda filled it in; the official examples' placeholder `"link_entity": "link_entity"`)
    /// counts for any table that can hold it.
    pub fn points_into(&self, field: &Field, row: &serde_json::Map<String, serde_json::Value>, parent: &str) -> bool {
        let named = self.entity_field(field).and_then(|entity| row.get(entity)?.as_str());
        match named.filter(|named| TABLES.iter().any(|t| t.name.eq_ignore_ascii_case(named))) {
            Some(named) => named.eq_ignore_ascii_case(parent),
            None => field.references == Some("*") || field.references == Some(parent),
        }
    }

    /// Fields that point at other rows.
    pub fn reference_fields(&self) -> impl Iterator<Item = &'static Field> {
        self.fields.iter().filter(|f| f.references.is_some())
    }

    /// The table whose existing row `field` must name when a row is written: none for a polymorphic link,
    /// nor for a link to the parent in a hierarchy of this same table (`taxonomy_term.parent_id`,
    /// `organization.parent_organization_id`). A directory often holds one branch of a taxonomy or of a
    /// group of organizations whose upper rows live elsewhere; the official HSDS examples name such parents.
    pub fn checked_reference(&self, field: &Field) -> Option<&'static str> {
        field.references.filter(|target| *target != "*" && *target != self.name)
    }

    /// For a `Many` nested key: the field of the child table that points back at a row of `self`.
    pub fn back_reference(&self, nested: &Nested) -> Option<&'static Field> {
        let child = table(nested.table)?;
        child
            .fields
            .iter()
            .find(|f| f.references == Some(self.name))
            .or_else(|| child.fields.iter().find(|f| f.references == Some("*")))
    }

    /// For a `One` nested key: the field of `self` that holds the related row's id.
    pub fn forward_reference(&self, nested: &Nested) -> Option<&'static Field> {
        self.link_to(nested.table)
    }

    /// The field of `self` that holds the id of a `table` row (`service.organization_id` for `organization`).
    pub fn link_to(&self, table: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.references == Some(table))
    }

    pub fn nested(&self, key: &str) -> Option<&'static Nested> {
        // `self` lives in the static catalog, but the borrow checker only sees `&self`; look it up again.
        table(self.name)?.nested.iter().find(|n| n.key == key)
    }
}

/// The table with this singular name.
pub fn table(name: &str) -> Option<&'static Table> {
    TABLES.iter().find(|t| t.name == name)
}

/// The table served under this API path segment.
pub fn table_by_plural(plural: &str) -> Option<&'static Table> {
    TABLES.iter().find(|t| t.plural == plural)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_has_all_24_tables_with_ids() {
        assert_eq!(TABLES.len(), 24);
        for t in TABLES {
            assert_eq!(t.fields[0].name, "id", "{} starts with id", t.name);
            assert!(table_by_plural(t.plural).is_some());
        }
    }

    #[test]
    fn every_nested_key_resolves_to_a_reference() {
        for t in TABLES {
            for n in t.nested {
                let resolved = match n.kind {
                    NestedKind::Many => t.back_reference(n),
                    NestedKind::One => t.forward_reference(n),
                };
                assert!(resolved.is_some(), "{}.{} has no reference field", t.name, n.key);
            }
        }
    }

    #[test]
    fn phones_of_a_service_point_back_by_service_id() {
        let service = table("service").unwrap();
        let phones = service.nested("phones").unwrap();
        assert_eq!(service.back_reference(phones).unwrap().name, "service_id");
        let attributes = service.nested("attributes").unwrap();
        assert_eq!(service.back_reference(attributes).unwrap().name, "link_id");
    }
}
