//! The HSDS domain: the table catalog, validation of rows and documents, and the shapes of compiled
//! documents. Pure code: nothing here touches HTTP or the database.

pub mod catalog;
mod catalog_data;
pub mod document;
pub mod merge_patch;
pub mod schema;
#[cfg(test)]
pub(crate) mod strategies;
pub mod validate;
