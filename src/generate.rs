//! A deterministic generator of a realistic human-services directory, as flat HSDS rows.
//!
//! The directory is built organization by organization: each organization brings its locations (with
//! physical addresses around a handful of US and UK cities), an optional program, and a few services with
//! their service-at-location links, phones, weekly schedules, languages and taxonomy attributes. Rows
//! come out in dependency order, so every reference points at a row already emitted, and only one
//! organization's rows are held in memory at a time. All randomness (UUIDs included) comes from a ChaCha
//! generator seeded by [`GenerateOptions::seed`], and timestamps are derived from the seed, never from the
//! clock: the same options always produce the same rows, byte for byte.

use std::collections::VecDeque;
use std::ops::RangeInclusive;

use chrono::{DateTime, SecondsFormat, Utc};
use rand::seq::index;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};
use uuid::Builder;

use crate::hsds::catalog::{TABLES, Table};

/// One flat HSDS row: field name to value, absent optional fields left out.
pub type Row = Map<String, Value>;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateOptions {
    /// The exact number of service rows to generate.
    pub services: usize,
    /// Seeds every random choice, UUIDs and timestamps included.
    pub seed: u64,
    /// How many services one organization runs (the last organization may run fewer). Counts are skewed
    /// towards the low end: the default `1..=10` averages about four services per organization.
    pub services_per_organization: RangeInclusive<usize>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            services: 1_000,
            seed: 1,
            services_per_organization: 1..=10,
        }
    }
}

/// Generates the directory described by `opts` as `(table, row)` pairs in dependency order: the taxonomy
/// and its terms first, then, organization by organization, the organization, its program, locations,
/// addresses, services, service-at-locations, phones, schedules, languages and attributes.
///
/// The iterator is lazy and holds one organization's rows at a time, so it can stream directories of any
/// size. It does not borrow `opts`.
pub fn generate(opts: &GenerateOptions) -> impl Iterator<Item = (&'static Table, Row)> + use<> {
    Generator::new(opts)
}

// ---------------------------------------------------------------------------------------------------------
// Catalog tables, resolved at compile time: a name missing from the catalog fails the build.

const fn same_str(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

const fn catalog_table(name: &str) -> &'static Table {
    let tables: &'static [Table] = TABLES;
    let mut i = 0;
    while i < tables.len() {
        if same_str(tables[i].name, name) {
            return &tables[i];
        }
        i += 1;
    }
    panic!("table missing from the HSDS catalog");
}

const TAXONOMY: &Table = catalog_table("taxonomy");
const TAXONOMY_TERM: &Table = catalog_table("taxonomy_term");
const ORGANIZATION: &Table = catalog_table("organization");
const PROGRAM: &Table = catalog_table("program");
const LOCATION: &Table = catalog_table("location");
const ADDRESS: &Table = catalog_table("address");
const SERVICE: &Table = catalog_table("service");
const SERVICE_AT_LOCATION: &Table = catalog_table("service_at_location");
const PHONE: &Table = catalog_table("phone");
const SCHEDULE: &Table = catalog_table("schedule");
const LANGUAGE: &Table = catalog_table("language");
const ATTRIBUTE: &Table = catalog_table("attribute");

// ---------------------------------------------------------------------------------------------------------
// Word lists. Kept one entry to a line (`rustfmt::skip`) so they read as tables.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Country {
    Us,
    Uk,
}

struct City {
    name: &'static str,
    state_province: &'static str,
    region: Option<&'static str>,
    country: Country,
    latitude: f64,
    longitude: f64,
    /// US: the area code. UK: the area code plus the 496 exchange reserved for fiction.
    phone_prefix: &'static str,
    /// US: whole ZIP codes. UK: outward codes, completed with a random inward code.
    postal_codes: &'static [&'static str],
    neighborhoods: &'static [&'static str],
    streets: &'static [&'static str],
}

#[rustfmt::skip]
const CITIES: &[City] = &[
    City {
        name: "Chicago", state_province: "IL", region: None, country: Country::Us,
        latitude: 41.8781, longitude: -87.6298, phone_prefix: "312",
        postal_codes: &["60601", "60605", "60607", "60608", "60612", "60614", "60616", "60618", "60622", "60623", "60625", "60637", "60640", "60647"],
        neighborhoods: &["Pilsen", "Uptown", "Hyde Park", "Logan Square", "Englewood", "Rogers Park", "Bronzeville", "Little Village"],
        streets: &["Halsted", "Ashland", "Western", "Damen", "Cermak", "Division", "Milwaukee", "Roosevelt", "Clark", "Kedzie"],
    },
    City {
        name: "Seattle", state_province: "WA", region: None, country: Country::Us,
        latitude: 47.6062, longitude: -122.3321, phone_prefix: "206",
        postal_codes: &["98101", "98102", "98103", "98104", "98105", "98108", "98109", "98112", "98118", "98122", "98144"],
        neighborhoods: &["Capitol Hill", "Ballard", "Rainier Valley", "Fremont", "Beacon Hill", "Georgetown", "University District", "Central District"],
        streets: &["Pine", "Yesler", "Jackson", "Rainier", "Aurora", "Madison", "Cherry", "Union", "Stewart", "Denny"],
    },
    City {
        name: "Austin", state_province: "TX", region: None, country: Country::Us,
        latitude: 30.2672, longitude: -97.7431, phone_prefix: "512",
        postal_codes: &["78701", "78702", "78703", "78704", "78721", "78723", "78741", "78744", "78745", "78751", "78752", "78753"],
        neighborhoods: &["East Cesar Chavez", "Montopolis", "Dove Springs", "Hyde Park", "Mueller", "North Loop", "Riverside", "Travis Heights"],
        streets: &["Congress", "Lamar", "Riverside", "Cesar Chavez", "Airport", "Burnet", "Manor", "Oltorf", "Pleasant Valley", "Rundberg"],
    },
    City {
        name: "Atlanta", state_province: "GA", region: None, country: Country::Us,
        latitude: 33.7490, longitude: -84.3880, phone_prefix: "404",
        postal_codes: &["30303", "30307", "30308", "30310", "30311", "30312", "30314", "30315", "30316", "30318", "30324"],
        neighborhoods: &["West End", "Old Fourth Ward", "Kirkwood", "Grant Park", "Midtown", "Vine City", "Edgewood", "Sweet Auburn"],
        streets: &["Peachtree", "Ponce de Leon", "Auburn", "Edgewood", "Memorial", "Piedmont", "Moreland", "Glenwood", "Cascade", "Metropolitan"],
    },
    City {
        name: "Denver", state_province: "CO", region: None, country: Country::Us,
        latitude: 39.7392, longitude: -104.9903, phone_prefix: "303",
        postal_codes: &["80202", "80203", "80204", "80205", "80206", "80211", "80216", "80219", "80220", "80223"],
        neighborhoods: &["Five Points", "Capitol Hill", "Westwood", "Montbello", "Globeville", "Sun Valley", "Highland", "Baker"],
        streets: &["Colfax", "Federal", "Colorado", "Santa Fe", "Alameda", "Speer", "Larimer", "Welton", "Downing", "Sheridan"],
    },
    City {
        name: "London", state_province: "England", region: Some("Greater London"), country: Country::Uk,
        latitude: 51.5072, longitude: -0.1276, phone_prefix: "020 7946",
        postal_codes: &["E1", "E2", "E8", "N1", "N7", "N15", "SE1", "SE5", "SE15", "SW2", "SW9", "W10", "NW1"],
        neighborhoods: &["Hackney", "Brixton", "Peckham", "Tottenham", "Whitechapel", "Camden", "Lambeth", "Islington"],
        streets: &["Mare", "Coldharbour", "Rye", "Essex", "Holloway", "Kingsland", "Walworth", "Brick", "Cable", "Seven Sisters"],
    },
    City {
        name: "Manchester", state_province: "England", region: Some("Greater Manchester"), country: Country::Uk,
        latitude: 53.4808, longitude: -2.2426, phone_prefix: "0161 496",
        postal_codes: &["M1", "M4", "M8", "M11", "M12", "M13", "M14", "M15", "M16", "M40"],
        neighborhoods: &["Ancoats", "Moss Side", "Hulme", "Longsight", "Cheetham Hill", "Gorton", "Rusholme", "Levenshulme"],
        streets: &["Oxford", "Stockport", "Oldham", "Wilmslow", "Princess", "Great Ancoats", "Ashton Old", "Hyde", "Rochdale", "Claremont"],
    },
    City {
        name: "Birmingham", state_province: "England", region: Some("West Midlands"), country: Country::Uk,
        latitude: 52.4862, longitude: -1.8904, phone_prefix: "0121 496",
        postal_codes: &["B1", "B4", "B5", "B6", "B7", "B9", "B10", "B11", "B12", "B19", "B21"],
        neighborhoods: &["Aston", "Digbeth", "Handsworth", "Small Heath", "Sparkbrook", "Balsall Heath", "Ladywood", "Lozells"],
        streets: &["Coventry", "Stratford", "Soho", "Lozells", "Moseley", "Alum Rock", "Ladypool", "Dudley", "Bristol", "Warwick"],
    },
    City {
        name: "Glasgow", state_province: "Scotland", region: Some("Glasgow City"), country: Country::Uk,
        latitude: 55.8642, longitude: -4.2518, phone_prefix: "0141 496",
        postal_codes: &["G1", "G2", "G3", "G4", "G5", "G11", "G20", "G31", "G40", "G42", "G51"],
        neighborhoods: &["Govanhill", "Partick", "Gorbals", "Dennistoun", "Govan", "Maryhill", "Bridgeton", "Springburn"],
        streets: &["Victoria", "Paisley", "Duke", "Gallowgate", "Argyle", "Maryhill", "Dumbarton", "Cathcart", "Alexandra", "Springburn"],
    },
    City {
        name: "Leeds", state_province: "England", region: Some("West Yorkshire"), country: Country::Uk,
        latitude: 53.8008, longitude: -1.5491, phone_prefix: "0113 496",
        postal_codes: &["LS1", "LS2", "LS4", "LS6", "LS7", "LS8", "LS9", "LS11", "LS12"],
        neighborhoods: &["Chapeltown", "Harehills", "Beeston", "Armley", "Hyde Park", "Burmantofts", "Holbeck", "Seacroft"],
        streets: &["Roundhay", "Chapeltown", "Kirkstall", "Dewsbury", "York", "Harehills", "Tong", "Beckett", "Meanwood", "Otley"],
    },
];

const US_STREET_SUFFIXES: &[&str] = &["Street", "Avenue", "Boulevard", "Road", "Drive"];
const UK_STREET_SUFFIXES: &[&str] = &["Road", "Street", "Lane", "Way", "Avenue"];
/// Letters a UK inward postcode may end with.
const UK_INWARD_LETTERS: &[u8] = b"ABDEFGHJLNPQRSTUWXYZ";

#[rustfmt::skip]
const ORG_PREFIXES: &[&str] = &[
    "Riverside", "Northside", "Eastgate", "Hope", "Harbor Light", "New Horizons", "Cornerstone", "Beacon", "Unity",
    "Bridgeway", "Open Door", "Common Ground", "Lighthouse", "Maple Tree", "Cedar", "Summit", "Good Neighbor",
    "Second Chance", "Pathways", "Helping Hands", "Oak Hill", "St. Anne's", "Westview", "Sunrise", "Fairhaven", "Grace",
    "Compass", "Kinship",
];
#[rustfmt::skip]
const ORG_KINDS: &[&str] = &[
    "Community Services", "Family Centre", "Outreach", "Alliance", "Coalition", "Foundation", "Mission", "Trust",
    "Partnership", "Community Action", "Network", "Association",
];
#[rustfmt::skip]
const PROGRAM_NAMES: &[&str] = &[
    "Family Stability Program", "Pathways to Work", "Healthy Communities Initiative", "Safe at Home Program",
    "Youth Futures Program", "Neighborhood Resilience Project", "Fresh Start Program",
];
const SITE_KINDS: &[&str] = &["Centre", "Hub", "Office", "Community Hall", "Drop-in"];

const ACCESS: &[&str] = &[
    "Walk-ins are welcome during opening hours.",
    "Call ahead to book an appointment.",
    "A referral from a caseworker, doctor or school is required.",
    "Bring photo ID and proof of address to your first visit.",
    "Complete a short intake form online or by phone before your first visit.",
];
const WAIT_TIMES: &[&str] = &[
    "No wait",
    "Same day",
    "Usually within a week",
    "Two to four weeks",
];

/// Languages other than English offered by services, with their ISO 639-1 codes.
#[rustfmt::skip]
const US_LANGUAGES: &[(&str, &str)] = &[
    ("Spanish", "es"), ("Chinese", "zh"), ("Vietnamese", "vi"), ("Arabic", "ar"), ("Somali", "so"),
    ("Haitian Creole", "ht"), ("Russian", "ru"), ("Korean", "ko"),
];
#[rustfmt::skip]
const UK_LANGUAGES: &[(&str, &str)] = &[
    ("Polish", "pl"), ("Urdu", "ur"), ("Punjabi", "pa"), ("Bengali", "bn"), ("Arabic", "ar"), ("Romanian", "ro"),
    ("Somali", "so"), ("Portuguese", "pt"),
];

/// The top-level taxonomy terms: `(code, name, description)`.
#[rustfmt::skip]
const CATEGORIES: &[(&str, &str, &str)] = &[
    ("BN", "Basic Needs", "Food, clothing, transport and other essentials of daily life."),
    ("HO", "Housing", "Shelter, housing and help keeping a home."),
    ("HE", "Health Care", "Medical and dental care and treatment."),
    ("MH", "Mental Health", "Emotional wellbeing, counselling and crisis support."),
    ("EM", "Employment", "Help finding, keeping and preparing for work."),
    ("LE", "Legal Services", "Legal advice, representation and rights."),
    ("ED", "Education", "Learning for adults, young people and children."),
    ("FA", "Family Support", "Support for parents, carers, children and survivors of abuse."),
    ("IN", "Income Support", "Benefits, tax credits and financial help."),
    ("TP", "Target Populations", "Groups of people a service is designed for."),
];

/// A kind of service, which is also a leaf of the taxonomy.
struct Kind {
    code: &'static str,
    name: &'static str,
    /// Code of the parent term in [`CATEGORIES`].
    parent: &'static str,
    /// Open all day, every day.
    round_the_clock: bool,
    /// Ways services of this kind are named.
    variants: &'static [&'static str],
    /// The first sentence of a service's description; doubles as the term's description.
    summary: &'static str,
}

#[rustfmt::skip]
const KINDS: &[Kind] = &[
    Kind { code: "BN-01", name: "Food Pantry", parent: "BN", round_the_clock: false,
        variants: &["Food Pantry", "Community Food Pantry", "Food Bank", "Grocery Distribution"],
        summary: "Free groceries, fresh produce and shelf-stable food for households facing food insecurity." },
    Kind { code: "BN-02", name: "Hot Meals", parent: "BN", round_the_clock: false,
        variants: &["Community Kitchen", "Hot Meals", "Soup Kitchen", "Free Lunch Club"],
        summary: "Free hot meals served in a welcoming dining room, no questions asked." },
    Kind { code: "BN-03", name: "Clothing Bank", parent: "BN", round_the_clock: false,
        variants: &["Clothing Closet", "Clothing Bank", "Winter Coat Drive"],
        summary: "Free clean clothing, shoes and winter coats for adults and children." },
    Kind { code: "BN-04", name: "Transportation Assistance", parent: "BN", round_the_clock: false,
        variants: &["Ride Assistance", "Medical Transport", "Bus Pass Program"],
        summary: "Free rides and bus passes to medical appointments, job interviews and essential errands." },
    Kind { code: "HO-01", name: "Emergency Shelter", parent: "HO", round_the_clock: true,
        variants: &["Emergency Shelter", "Night Shelter", "Winter Shelter"],
        summary: "Emergency shelter beds, showers and a safe place to sleep for people experiencing homelessness." },
    Kind { code: "HO-02", name: "Transitional Housing", parent: "HO", round_the_clock: false,
        variants: &["Transitional Housing", "Supported Housing", "Bridge Housing"],
        summary: "Transitional housing with case management to help residents move into permanent homes." },
    Kind { code: "HO-03", name: "Rental Assistance", parent: "HO", round_the_clock: false,
        variants: &["Rental Assistance", "Eviction Prevention Fund", "Rent Arrears Help"],
        summary: "Rental assistance and eviction prevention grants for tenants behind on rent." },
    Kind { code: "HO-04", name: "Utility Assistance", parent: "HO", round_the_clock: false,
        variants: &["Utility Assistance", "Energy Bill Help", "Warm Home Fund"],
        summary: "Help paying heating, electricity and water bills and avoiding shut-offs." },
    Kind { code: "HE-01", name: "Primary Care", parent: "HE", round_the_clock: false,
        variants: &["Community Health Clinic", "Primary Care Clinic", "Free Clinic"],
        summary: "Primary medical care, check-ups, vaccinations and prescriptions for uninsured and low-income patients." },
    Kind { code: "HE-02", name: "Dental Care", parent: "HE", round_the_clock: false,
        variants: &["Dental Clinic", "Community Dental Care", "Emergency Dental"],
        summary: "Low-cost dental care including cleanings, fillings and emergency extractions." },
    Kind { code: "HE-03", name: "Substance Use Treatment", parent: "HE", round_the_clock: false,
        variants: &["Recovery Services", "Addiction Treatment", "Substance Use Clinic"],
        summary: "Outpatient substance use treatment, detox referrals and recovery coaching for alcohol and drug addiction." },
    Kind { code: "MH-01", name: "Mental Health Counselling", parent: "MH", round_the_clock: false,
        variants: &["Counselling Service", "Mental Health Counselling", "Talking Therapies"],
        summary: "Mental health counseling and talking therapy for anxiety, depression, grief and trauma." },
    Kind { code: "MH-02", name: "Crisis Support", parent: "MH", round_the_clock: true,
        variants: &["Crisis Line", "Crisis Support", "Suicide Prevention Helpline"],
        summary: "Round-the-clock crisis support and suicide prevention from trained counsellors." },
    Kind { code: "MH-03", name: "Peer Support Groups", parent: "MH", round_the_clock: false,
        variants: &["Peer Support Group", "Wellbeing Circle", "Recovery Café"],
        summary: "Peer support groups where people with lived experience of mental illness meet and support each other." },
    Kind { code: "EM-01", name: "Job Training", parent: "EM", round_the_clock: false,
        variants: &["Job Training", "Skills Academy", "Vocational Training", "Digital Skills Course"],
        summary: "Job training and vocational courses in construction, healthcare, hospitality and digital skills." },
    Kind { code: "EM-02", name: "Job Placement", parent: "EM", round_the_clock: false,
        variants: &["Employment Services", "Job Placement", "Careers Service"],
        summary: "Job search support and job placement with local employers, with follow-up once you start work." },
    Kind { code: "EM-03", name: "CV and Interview Coaching", parent: "EM", round_the_clock: false,
        variants: &["Resume Clinic", "CV Workshop", "Interview Coaching"],
        summary: "One-to-one help writing a resume or CV and preparing for job interviews." },
    Kind { code: "LE-01", name: "Legal Aid", parent: "LE", round_the_clock: false,
        variants: &["Legal Aid Clinic", "Free Legal Advice", "Law Centre"],
        summary: "Free legal aid and advice on housing, debt, benefits, employment and family law." },
    Kind { code: "LE-02", name: "Immigration Legal Services", parent: "LE", round_the_clock: false,
        variants: &["Immigration Advice", "Refugee Legal Clinic", "Citizenship Help"],
        summary: "Immigration legal services: asylum claims, visas, family reunion and citizenship applications." },
    Kind { code: "LE-03", name: "Tenant Rights Advice", parent: "LE", round_the_clock: false,
        variants: &["Tenant Rights Advice", "Housing Advice Line", "Renters' Clinic"],
        summary: "Advice for tenants facing eviction, disrepair or disputes with a landlord." },
    Kind { code: "ED-01", name: "Adult Literacy", parent: "ED", round_the_clock: false,
        variants: &["Adult Literacy", "Reading and Writing Classes", "Adult Learning"],
        summary: "Adult literacy and numeracy classes in small, friendly groups." },
    Kind { code: "ED-02", name: "English Language Classes", parent: "ED", round_the_clock: false,
        variants: &["ESL Classes", "English Conversation Club", "ESOL Classes"],
        summary: "English language classes (ESL/ESOL) for speakers of other languages, from beginner to advanced." },
    Kind { code: "ED-03", name: "Tutoring and Homework Help", parent: "ED", round_the_clock: false,
        variants: &["Homework Club", "After-School Tutoring", "Study Support"],
        summary: "After-school tutoring and homework help in reading, maths and science." },
    Kind { code: "FA-01", name: "Child Care", parent: "FA", round_the_clock: false,
        variants: &["Child Care", "Early Learning Centre", "Day Nursery"],
        summary: "Affordable child care and early learning for children from six weeks to five years." },
    Kind { code: "FA-02", name: "Parenting Support", parent: "FA", round_the_clock: false,
        variants: &["Parenting Support", "New Parents Group", "Family Coaching"],
        summary: "Parenting classes, home visits and support groups for parents and carers." },
    Kind { code: "FA-03", name: "Domestic Violence Support", parent: "FA", round_the_clock: true,
        variants: &["Domestic Violence Support", "Safe Haven", "Domestic Abuse Helpline"],
        summary: "Confidential support, safety planning and refuge for survivors of domestic violence and abuse." },
    Kind { code: "IN-01", name: "Benefits Enrollment", parent: "IN", round_the_clock: false,
        variants: &["Benefits Advice", "Benefits Enrollment", "Money Advice"],
        summary: "Help checking eligibility for and applying to public benefits, food assistance and health insurance." },
    Kind { code: "IN-02", name: "Free Tax Preparation", parent: "IN", round_the_clock: false,
        variants: &["Free Tax Preparation", "Tax Help Clinic"],
        summary: "Free tax preparation and help claiming tax credits for low- and moderate-income households." },
];

/// A group of people a service is designed for, which is also a leaf of the taxonomy under `TP`.
struct Population {
    code: &'static str,
    name: &'static str,
    description: &'static str,
    eligibility: &'static str,
    minimum_age: Option<u8>,
    maximum_age: Option<u8>,
}

#[rustfmt::skip]
const POPULATIONS: &[Population] = &[
    Population { code: "TP-01", name: "Seniors", minimum_age: Some(60), maximum_age: None,
        description: "Older adults aged 60 and over.",
        eligibility: "For older adults aged 60 and over." },
    Population { code: "TP-02", name: "Veterans", minimum_age: Some(18), maximum_age: None,
        description: "People who served in the armed forces, and their families.",
        eligibility: "For veterans of the armed forces and their families." },
    Population { code: "TP-03", name: "Youth", minimum_age: Some(16), maximum_age: Some(24),
        description: "Young people aged 16 to 24.",
        eligibility: "For young people aged 16 to 24." },
    Population { code: "TP-04", name: "Families with Children", minimum_age: None, maximum_age: None,
        description: "Parents and carers with children under 18.",
        eligibility: "For families with children under 18." },
    Population { code: "TP-05", name: "People Experiencing Homelessness", minimum_age: Some(18), maximum_age: None,
        description: "People without a stable place to live.",
        eligibility: "For people who are homeless or at risk of homelessness." },
    Population { code: "TP-06", name: "Immigrants and Refugees", minimum_age: None, maximum_age: None,
        description: "Newcomers, asylum seekers and refugees.",
        eligibility: "For immigrants, refugees and asylum seekers." },
    Population { code: "TP-07", name: "People with Disabilities", minimum_age: None, maximum_age: None,
        description: "People with physical, sensory, learning or mental health disabilities.",
        eligibility: "For people with disabilities and their carers." },
];

/// A weekly opening pattern: `(byday, opens_at, closes_at, description)`.
type Hours = (&'static str, &'static str, &'static str, &'static str);

#[rustfmt::skip]
const WEEKDAY_HOURS: &[Hours] = &[
    ("MO,TU,WE,TH,FR", "09:00:00", "17:00:00", "Monday to Friday, 9am to 5pm"),
    ("MO,TU,WE,TH,FR", "08:30:00", "16:30:00", "Monday to Friday, 8:30am to 4:30pm"),
    ("MO,TU,WE,TH", "09:00:00", "19:00:00", "Monday to Thursday, 9am to 7pm"),
    ("MO,WE,FR", "10:00:00", "14:00:00", "Monday, Wednesday and Friday, 10am to 2pm"),
    ("TU,TH", "13:00:00", "19:00:00", "Tuesday and Thursday, 1pm to 7pm"),
    ("TU,WE,TH", "10:00:00", "16:00:00", "Tuesday to Thursday, 10am to 4pm"),
];
const SATURDAY_HOURS: Hours = ("SA", "10:00:00", "13:00:00", "Saturday, 10am to 1pm");
#[rustfmt::skip]
const ALL_DAY_HOURS: Hours = ("MO,TU,WE,TH,FR,SA,SU", "00:00:00", "23:59:00", "Open 24 hours a day, 7 days a week");

/// 2024-01-01T00:00:00Z; the generated directory's "now" lies up to a year after it, chosen by the seed.
const EPOCH_2024: i64 = 1_704_067_200;
const DAY: i64 = 86_400;

// ---------------------------------------------------------------------------------------------------------
// The generator.

/// Ids of the generated taxonomy terms, parallel to [`KINDS`] and [`POPULATIONS`].
struct Terms {
    kinds: Vec<String>,
    populations: Vec<String>,
}

/// One location of the organization being generated.
struct Site {
    id: String,
    name: String,
}

/// The organization being generated, as its services need it.
struct Org {
    id: String,
    short: &'static str,
    slug: String,
    city: &'static City,
    program_id: Option<String>,
    sites: Vec<Site>,
}

/// Rows of one organization, grouped by table so they can be emitted in dependency order.
#[derive(Default)]
struct Batch {
    organizations: Vec<Row>,
    programs: Vec<Row>,
    locations: Vec<Row>,
    addresses: Vec<Row>,
    services: Vec<Row>,
    service_at_locations: Vec<Row>,
    phones: Vec<Row>,
    schedules: Vec<Row>,
    languages: Vec<Row>,
    attributes: Vec<Row>,
}

impl Batch {
    fn drain_into(self, out: &mut VecDeque<(&'static Table, Row)>) {
        let groups = [
            (ORGANIZATION, self.organizations),
            (PROGRAM, self.programs),
            (LOCATION, self.locations),
            (ADDRESS, self.addresses),
            (SERVICE, self.services),
            (SERVICE_AT_LOCATION, self.service_at_locations),
            (PHONE, self.phones),
            (SCHEDULE, self.schedules),
            (LANGUAGE, self.languages),
            (ATTRIBUTE, self.attributes),
        ];
        for (table, rows) in groups {
            out.extend(rows.into_iter().map(|row| (table, row)));
        }
    }
}

struct Generator {
    rng: ChaCha8Rng,
    services_per_organization: RangeInclusive<usize>,
    /// Services still to generate.
    remaining: usize,
    /// The directory's "now", in seconds since the Unix epoch.
    now: i64,
    terms: Terms,
    pending: VecDeque<(&'static Table, Row)>,
}

impl Iterator for Generator {
    type Item = (&'static Table, Row);

    fn next(&mut self) -> Option<Self::Item> {
        if self.pending.is_empty() && self.remaining > 0 {
            self.organization();
        }
        self.pending.pop_front()
    }
}

/// Builds a row from `(field, value)` pairs, leaving out null values.
fn row<const N: usize>(fields: [(&str, Value); N]) -> Row {
    fields
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

fn text(s: impl Into<String>) -> Value {
    Value::String(s.into())
}

/// Lower-case words joined by hyphens, for host names and paths.
fn slug(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if c == ' ' && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_owned()
}

fn timestamp(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap_or(DateTime::UNIX_EPOCH)
}

/// A term name as it reads inside a sentence: lower case, but acronyms and "English" kept.
fn in_sentence(name: &str) -> String {
    let words = name.split(' ').map(|word| {
        let acronym = word.len() > 1 && word.chars().all(|c| c.is_ascii_uppercase());
        if acronym || word == "English" {
            word.to_owned()
        } else {
            word.to_lowercase()
        }
    });
    words.collect::<Vec<_>>().join(" ")
}

fn sentence_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

impl Generator {
    fn new(opts: &GenerateOptions) -> Self {
        let lo = (*opts.services_per_organization.start()).max(1);
        let hi = (*opts.services_per_organization.end()).max(lo);
        let seed_day = i64::try_from(opts.seed % 366).unwrap_or(0);
        let mut generator = Self {
            rng: ChaCha8Rng::seed_from_u64(opts.seed),
            services_per_organization: lo..=hi,
            remaining: opts.services,
            now: EPOCH_2024 + seed_day * DAY + 9 * 3600,
            terms: Terms {
                kinds: Vec::new(),
                populations: Vec::new(),
            },
            pending: VecDeque::new(),
        };
        generator.taxonomy();
        generator
    }

    fn uuid(&mut self) -> String {
        let mut bytes = [0u8; 16];
        self.rng.fill_bytes(&mut bytes);
        Builder::from_random_bytes(bytes).into_uuid().to_string()
    }

    fn pick<T>(&mut self, items: &'static [T]) -> &'static T {
        &items[self.rng.gen_range(0..items.len())]
    }

    /// The taxonomy, its top-level categories, then the leaves under them.
    fn taxonomy(&mut self) {
        let taxonomy_id = self.uuid();
        self.pending.push_back((
            TAXONOMY,
            row([
                ("id", text(&taxonomy_id)),
                ("name", text("hsda Community Services Taxonomy")),
                (
                    "description",
                    text("A compact taxonomy of human services and the people they serve."),
                ),
                (
                    "uri",
                    text("https://taxonomy.example.org/hsda-community-services"),
                ),
                ("version", text("1.0")),
            ]),
        ));
        let mut category_ids = Vec::with_capacity(CATEGORIES.len());
        for &(code, name, description) in CATEGORIES {
            let id = self.uuid();
            self.push_term(&taxonomy_id, &id, code, name, description, None);
            category_ids.push((code, id));
        }
        let parent_of = |code: &str| {
            category_ids
                .iter()
                .find(|(c, _)| *c == code)
                .map(|(_, id)| id.clone())
        };
        let mut kinds = Vec::with_capacity(KINDS.len());
        for kind in KINDS {
            let id = self.uuid();
            self.push_term(
                &taxonomy_id,
                &id,
                kind.code,
                kind.name,
                kind.summary,
                parent_of(kind.parent),
            );
            kinds.push(id);
        }
        let mut populations = Vec::with_capacity(POPULATIONS.len());
        for population in POPULATIONS {
            let id = self.uuid();
            self.push_term(
                &taxonomy_id,
                &id,
                population.code,
                population.name,
                population.description,
                parent_of("TP"),
            );
            populations.push(id);
        }
        self.terms = Terms { kinds, populations };
    }

    fn push_term(
        &mut self,
        taxonomy_id: &str,
        id: &str,
        code: &str,
        name: &str,
        description: &str,
        parent_id: Option<String>,
    ) {
        self.pending.push_back((
            TAXONOMY_TERM,
            row([
                ("id", text(id)),
                ("code", text(code)),
                ("name", text(name)),
                ("description", text(description)),
                ("parent_id", parent_id.into()),
                ("taxonomy", text("hsda-community-services")),
                ("language", text("en")),
                ("taxonomy_id", text(taxonomy_id)),
                (
                    "term_uri",
                    text(format!(
                        "https://taxonomy.example.org/hsda-community-services/{}",
                        code.to_ascii_lowercase()
                    )),
                ),
            ]),
        ));
    }

    /// How many services the next organization runs: the smaller of two uniform draws, so small
    /// organizations are common and large ones rare.
    fn organization_size(&mut self) -> usize {
        let range = self.services_per_organization.clone();
        let a = self.rng.gen_range(range.clone());
        let b = self.rng.gen_range(range);
        a.min(b).min(self.remaining)
    }

    /// Generates one organization with all its rows and queues them.
    fn organization(&mut self) {
        let size = self.organization_size();
        self.remaining -= size;
        let city = self.pick(CITIES);
        let short = *self.pick(ORG_PREFIXES);
        let org_kind = *self.pick(ORG_KINDS);
        let org_kind = match (city.country, org_kind) {
            (Country::Us, "Family Centre") => "Family Center",
            (_, kind) => kind,
        };
        let name = if self.rng.gen_bool(0.3) {
            format!("{short} {org_kind} of {}", city.name)
        } else {
            format!("{short} {org_kind}")
        };
        let slug = slug(&name);
        let kinds: Vec<usize> = if size <= KINDS.len() {
            index::sample(&mut self.rng, KINDS.len(), size).into_vec()
        } else {
            (0..size)
                .map(|_| self.rng.gen_range(0..KINDS.len()))
                .collect()
        };

        let mut batch = Batch::default();
        let id = self.uuid();
        let year = self.rng.gen_range(1952..=2021);
        let offers: Vec<String> = kinds.iter().map(|&k| in_sentence(KINDS[k].name)).collect();
        let offers: Vec<&str> = offers.iter().map(String::as_str).collect();
        let (charity, tax_status, legal_status) = match city.country {
            Country::Us => ("nonprofit", "501(c)(3)", "Nonprofit corporation"),
            Country::Uk => (
                "charity",
                "Registered charity",
                "Charitable incorporated organisation",
            ),
        };
        let tax_id = match city.country {
            Country::Us => Some(format!(
                "{:02}-{:07}",
                self.rng.gen_range(10..99),
                self.rng.gen_range(0..10_000_000)
            )),
            Country::Uk => None,
        };
        batch.organizations.push(row([
            ("id", text(&id)),
            ("name", text(&name)),
            (
                "description",
                text(format!(
                    "{name} is a {charity} founded in {year} serving people in and around {}: {}.",
                    city.name,
                    sentence_list(&offers)
                )),
            ),
            ("email", text(format!("info@{slug}.example.org"))),
            ("website", text(format!("https://{slug}.example.org"))),
            ("tax_status", text(tax_status)),
            ("tax_id", tax_id.into()),
            ("year_incorporated", year.into()),
            ("legal_status", text(legal_status)),
        ]));
        let number = self.phone_number(city);
        batch
            .phones
            .push(self.phone(("organization_id", &id), number, "voice", "Main office"));
        if self.rng.gen_bool(0.2) {
            let number = self.phone_number(city);
            batch
                .phones
                .push(self.phone(("organization_id", &id), number, "fax", "Fax"));
        }

        let program_id = if size >= 3 && self.rng.gen_bool(0.4) {
            let program_id = self.uuid();
            let program = *self.pick(PROGRAM_NAMES);
            batch.programs.push(row([
                ("id", text(&program_id)),
                ("organization_id", text(&id)),
                ("name", text(format!("{short} {program}"))),
                ("description", text(format!("{program} brings together several services of {name} under one caseworker, so people get joined-up help."))),
            ]));
            Some(program_id)
        } else {
            None
        };

        let mut org = Org {
            id,
            short,
            slug,
            city,
            program_id,
            sites: Vec::new(),
        };
        let site_count = self.rng.gen_range(1..=3);
        for _ in 0..site_count {
            self.location(&mut org, &mut batch);
        }
        for kind in kinds {
            self.service(&org, kind, &mut batch);
        }
        batch.drain_into(&mut self.pending);
    }

    fn location(&mut self, org: &mut Org, batch: &mut Batch) {
        let city = org.city;
        let id = self.uuid();
        let neighborhood = *self.pick(city.neighborhoods);
        let site_kind = match (city.country, *self.pick(SITE_KINDS)) {
            (Country::Us, "Centre") => "Center",
            (_, kind) => kind,
        };
        let name = format!("{} {neighborhood} {site_kind}", org.short);
        let (latitude, longitude) = self.near(city, 20.0);
        let (route_a, route_b) = (self.rng.gen_range(1..120), self.rng.gen_range(1..120));
        batch.locations.push(row([
            ("id", text(&id)),
            ("location_type", text("physical")),
            ("organization_id", text(&org.id)),
            ("name", text(&name)),
            ("description", text(format!("Our {neighborhood} site in {}, with step-free access and private rooms for confidential conversations.", city.name))),
            ("transportation", text(format!("Bus routes {route_a} and {route_b} stop nearby."))),
            ("latitude", latitude.into()),
            ("longitude", longitude.into()),
        ]));

        let street = *self.pick(city.streets);
        let suffix = match city.country {
            Country::Us => *self.pick(US_STREET_SUFFIXES),
            Country::Uk => *self.pick(UK_STREET_SUFFIXES),
        };
        let number = self.rng.gen_range(1..=2400);
        let address_2 = if self.rng.gen_bool(0.2) {
            Some(match city.country {
                Country::Us => format!("Suite {}", self.rng.gen_range(1..=12) * 100),
                Country::Uk => format!("Unit {}", self.rng.gen_range(1..=20)),
            })
        } else {
            None
        };
        let postal_code = self.postal_code(city);
        batch.addresses.push(row([
            ("id", text(self.uuid())),
            ("location_id", text(&id)),
            ("address_1", text(format!("{number} {street} {suffix}"))),
            ("address_2", address_2.into()),
            ("city", text(city.name)),
            ("region", city.region.into()),
            ("state_province", text(city.state_province)),
            ("postal_code", text(postal_code)),
            (
                "country",
                text(if city.country == Country::Us {
                    "US"
                } else {
                    "GB"
                }),
            ),
            ("address_type", text("physical")),
        ]));
        org.sites.push(Site { id, name });
    }

    fn service(&mut self, org: &Org, kind_index: usize, batch: &mut Batch) {
        let kind = &KINDS[kind_index];
        let city = org.city;
        let id = self.uuid();
        let variant = *self.pick(kind.variants);
        let name = format!("{} {variant}", org.short);
        let population = self
            .rng
            .gen_bool(0.6)
            .then(|| self.rng.gen_range(0..POPULATIONS.len()));
        let extra = self
            .rng
            .gen_bool(0.25)
            .then(|| (kind_index + self.rng.gen_range(1..KINDS.len())) % KINDS.len());
        let access = *self.pick(ACCESS);

        let mut description = kind.summary.to_owned();
        if let Some(extra) = extra {
            description.push_str(&format!(" Also offers {}.", in_sentence(KINDS[extra].name)));
        }
        let eligibility = match population {
            Some(p) => POPULATIONS[p].eligibility.to_owned(),
            None => format!(
                "Open to anyone living in {} and the surrounding area.",
                city.name
            ),
        };
        description.push(' ');
        description.push_str(&eligibility);
        description.push(' ');
        description.push_str(access);

        let status = match self.rng.gen_range(0..100) {
            0..90 => "active",
            90..95 => "temporarily closed",
            95..98 => "inactive",
            _ => "defunct",
        };
        let alert = (status == "temporarily closed").then(|| {
            "Temporarily closed for refurbishment; call for alternative arrangements.".to_owned()
        });
        let second_language = self.rng.gen_bool(0.5).then(|| match city.country {
            Country::Us => *self.pick(US_LANGUAGES),
            Country::Uk => *self.pick(UK_LANGUAGES),
        });
        let interpretation = second_language.map(|(language, _)| {
            format!(
                "Staff speak {language}; telephone interpreters are available for other languages."
            )
        });
        let fees = if self.rng.gen_bool(0.8) {
            "Free of charge."
        } else {
            "Sliding-scale fees based on household income; no one is turned away for inability to pay."
        };
        let wait_time = *self.pick(WAIT_TIMES);
        let last_modified = self.now - self.rng.gen_range(0..180 * DAY);
        let assured = last_modified - self.rng.gen_range(0..60) * DAY;
        let program_id = org
            .program_id
            .as_ref()
            .filter(|_| self.rng.gen_bool(0.5))
            .cloned();
        let service_slug = slug(variant);
        let email = self
            .rng
            .gen_bool(0.5)
            .then(|| format!("{service_slug}@{}.example.org", org.slug));
        let (minimum_age, maximum_age) = population.map_or((None, None), |p| {
            (POPULATIONS[p].minimum_age, POPULATIONS[p].maximum_age)
        });

        batch.services.push(row([
            ("id", text(&id)),
            ("organization_id", text(&org.id)),
            ("program_id", program_id.into()),
            ("name", text(&name)),
            ("description", text(description)),
            (
                "url",
                text(format!(
                    "https://{}.example.org/services/{service_slug}",
                    org.slug
                )),
            ),
            ("email", email.into()),
            ("status", text(status)),
            ("interpretation_services", interpretation.into()),
            ("application_process", text(access)),
            ("fees_description", text(fees)),
            ("wait_time", text(wait_time)),
            ("eligibility_description", text(eligibility)),
            ("minimum_age", minimum_age.into()),
            ("maximum_age", maximum_age.into()),
            (
                "assured_date",
                text(timestamp(assured).date_naive().to_string()),
            ),
            ("alert", alert.into()),
            (
                "last_modified",
                text(timestamp(last_modified).to_rfc3339_opts(SecondsFormat::Secs, true)),
            ),
        ]));

        let links = if org.sites.len() >= 2 && self.rng.gen_bool(0.35) {
            2
        } else {
            1
        };
        for site in index::sample(&mut self.rng, org.sites.len(), links) {
            let site = &org.sites[site];
            batch.service_at_locations.push(row([
                ("id", text(self.uuid())),
                ("service_id", text(&id)),
                ("location_id", text(&site.id)),
                ("description", text(format!("{name} at {}", site.name))),
            ]));
        }

        let number = self.phone_number(city);
        batch.phones.push(self.phone(
            ("service_id", &id),
            number,
            "voice",
            &format!("{name} enquiries"),
        ));
        if self.rng.gen_bool(0.25) {
            let number = self.phone_number(city);
            let (ty, description) = if kind.round_the_clock {
                ("voice", "24-hour helpline")
            } else {
                ("text", "Text messages")
            };
            batch
                .phones
                .push(self.phone(("service_id", &id), number, ty, description));
        }

        let mut hours = vec![if kind.round_the_clock {
            ALL_DAY_HOURS
        } else {
            *self.pick(WEEKDAY_HOURS)
        }];
        if !kind.round_the_clock && self.rng.gen_bool(0.3) {
            hours.push(SATURDAY_HOURS);
        }
        for (byday, opens_at, closes_at, description) in hours {
            batch.schedules.push(row([
                ("id", text(self.uuid())),
                ("service_id", text(&id)),
                ("wkst", text("MO")),
                ("freq", text("WEEKLY")),
                ("interval", 1.into()),
                ("byday", text(byday)),
                ("description", text(description)),
                ("opens_at", text(opens_at)),
                ("closes_at", text(closes_at)),
                ("attending_type", text("in person")),
            ]));
        }

        for (language, code) in std::iter::once(("English", "en")).chain(second_language) {
            batch.languages.push(row([
                ("id", text(self.uuid())),
                ("service_id", text(&id)),
                ("name", text(language)),
                ("code", text(code)),
            ]));
        }

        let mut terms = vec![(&self.terms.kinds[kind_index], kind.name)];
        if let Some(p) = population {
            terms.push((&self.terms.populations[p], POPULATIONS[p].name));
        }
        if let Some(extra) = extra {
            terms.push((&self.terms.kinds[extra], KINDS[extra].name));
        }
        let terms: Vec<(String, &str)> = terms
            .into_iter()
            .map(|(term, label)| (term.clone(), label))
            .collect();
        for (term_id, label) in terms {
            batch.attributes.push(row([
                ("id", text(self.uuid())),
                ("link_id", text(&id)),
                ("taxonomy_term_id", text(term_id)),
                ("link_type", text("taxonomy")),
                ("link_entity", text("service")),
                ("label", text(label)),
            ]));
        }
    }

    fn phone(&mut self, owner: (&str, &str), number: String, ty: &str, description: &str) -> Row {
        let mut phone = row([("id", text(self.uuid()))]);
        phone.insert(owner.0.to_owned(), text(owner.1));
        phone.insert("number".to_owned(), text(number));
        phone.insert("type".to_owned(), text(ty));
        phone.insert("description".to_owned(), text(description));
        phone
    }

    /// A number in the ranges reserved for fiction: 555-01xx in the US, the 496 exchanges in the UK.
    fn phone_number(&mut self, city: &City) -> String {
        match city.country {
            Country::Us => format!(
                "({}) 555-01{:02}",
                city.phone_prefix,
                self.rng.gen_range(0..100)
            ),
            Country::Uk => format!("{} {:04}", city.phone_prefix, self.rng.gen_range(0..1000)),
        }
    }

    fn postal_code(&mut self, city: &'static City) -> String {
        let outward = *self.pick(city.postal_codes);
        match city.country {
            Country::Us => outward.to_owned(),
            Country::Uk => {
                let digit = self.rng.gen_range(0..10);
                let a = char::from(*self.pick(UK_INWARD_LETTERS));
                let b = char::from(*self.pick(UK_INWARD_LETTERS));
                format!("{outward} {digit}{a}{b}")
            }
        }
    }

    /// A point uniformly distributed within `radius_km` of the city centre, rounded to six decimals.
    fn near(&mut self, city: &City, radius_km: f64) -> (f64, f64) {
        const KM_PER_DEGREE: f64 = 111.32;
        let distance = radius_km * self.rng.r#gen::<f64>().sqrt();
        let bearing = self.rng.gen_range(0.0..std::f64::consts::TAU);
        let latitude = city.latitude + distance * bearing.cos() / KM_PER_DEGREE;
        let longitude = city.longitude
            + distance * bearing.sin() / (KM_PER_DEGREE * city.latitude.to_radians().cos());
        let round = |x: f64| (x * 1e6).round() / 1e6;
        (round(latitude), round(longitude))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::hsds::catalog::FieldType;

    fn options(services: usize, seed: u64) -> GenerateOptions {
        GenerateOptions {
            services,
            seed,
            ..GenerateOptions::default()
        }
    }

    fn serialized(opts: &GenerateOptions) -> Vec<(&'static str, String)> {
        generate(opts)
            .map(|(table, row)| (table.name, Value::Object(row).to_string()))
            .collect()
    }

    #[test]
    fn same_options_give_the_same_rows_and_another_seed_differs() {
        let a = serialized(&options(300, 7));
        assert_eq!(a, serialized(&options(300, 7)));
        assert_ne!(a, serialized(&options(300, 8)));
    }

    #[test]
    fn service_count_matches_the_options() {
        for services in [0, 1, 5, 97, 1_000] {
            let count = generate(&options(services, 3))
                .filter(|(t, _)| t.name == "service")
                .count();
            assert_eq!(count, services);
        }
        let fixed = GenerateOptions {
            services_per_organization: 3..=3,
            ..options(10, 3)
        };
        let organizations = generate(&fixed)
            .filter(|(t, _)| t.name == "organization")
            .count();
        assert_eq!(organizations, 4);
    }

    fn check_type(table: &str, field: &str, ty: FieldType, value: &Value) {
        let at = format!("{table}.{field} = {value}");
        match ty {
            FieldType::Uuid => assert!(
                value
                    .as_str()
                    .and_then(|s| uuid::Uuid::parse_str(s).ok())
                    .is_some(),
                "{at}"
            ),
            FieldType::Number => assert!(value.is_number(), "{at}"),
            FieldType::Integer => assert!(value.is_i64() || value.is_u64(), "{at}"),
            FieldType::Boolean => assert!(value.is_boolean(), "{at}"),
            FieldType::Enum(allowed) => {
                assert!(value.as_str().is_some_and(|s| allowed.contains(&s)), "{at}")
            }
            FieldType::Date => assert!(
                value
                    .as_str()
                    .and_then(|s| s.parse::<chrono::NaiveDate>().ok())
                    .is_some(),
                "{at}"
            ),
            FieldType::DateTime => assert!(
                value
                    .as_str()
                    .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                    .is_some(),
                "{at}"
            ),
            FieldType::Time => assert!(
                value
                    .as_str()
                    .and_then(|s| chrono::NaiveTime::parse_from_str(s, "%H:%M:%S").ok())
                    .is_some(),
                "{at}"
            ),
            FieldType::Uri => assert!(
                value.as_str().is_some_and(|s| s.starts_with("https://")),
                "{at}"
            ),
            FieldType::Email => assert!(value.as_str().is_some_and(|s| s.contains('@')), "{at}"),
            FieldType::Text => assert!(value.as_str().is_some_and(|s| !s.is_empty()), "{at}"),
        }
    }

    #[test]
    fn every_row_satisfies_the_catalog_and_references_earlier_rows() {
        let mut seen: HashMap<&str, HashSet<String>> = HashMap::new();
        for (table, row) in generate(&options(500, 11)) {
            for key in row.keys() {
                assert!(
                    table.field(key).is_some(),
                    "{}.{key} is not in the catalog",
                    table.name
                );
            }
            for field in table.fields {
                let Some(value) = row.get(field.name) else {
                    assert!(!field.required, "{}.{} is required", table.name, field.name);
                    continue;
                };
                check_type(table.name, field.name, field.ty, value);
                let id = value.as_str().unwrap_or_default();
                match field.references {
                    Some("*") => assert!(
                        seen.values().any(|ids| ids.contains(id)),
                        "{}.{} dangles",
                        table.name,
                        field.name
                    ),
                    Some(target) => assert!(
                        seen.get(target).is_some_and(|ids| ids.contains(id)),
                        "{}.{} dangles",
                        table.name,
                        field.name
                    ),
                    None => {}
                }
            }
            let id = row["id"].as_str().unwrap_or_default().to_owned();
            assert!(
                seen.values().all(|ids| !ids.contains(&id)),
                "duplicate id {id}"
            );
            seen.entry(table.name).or_default().insert(id);
        }
        let terms = seen["taxonomy_term"].len();
        assert!((35..=50).contains(&terms), "{terms} taxonomy terms");
    }

    #[test]
    fn every_service_is_located_described_and_classified() {
        let rows: Vec<_> = generate(&options(400, 5)).collect();
        let count = |name: &str| rows.iter().filter(|(t, _)| t.name == name).count();
        let ratio = count("service") as f64 / count("organization") as f64;
        assert!(
            (2.5..=6.0).contains(&ratio),
            "{ratio} services per organization"
        );
        let services: HashSet<&str> = rows
            .iter()
            .filter(|(t, _)| t.name == "service")
            .filter_map(|(_, r)| r["id"].as_str())
            .collect();
        for table in ["service_at_location", "schedule", "language", "phone"] {
            let linked: HashSet<&str> = rows
                .iter()
                .filter(|(t, _)| t.name == table)
                .filter_map(|(_, r)| r.get("service_id")?.as_str())
                .collect();
            assert_eq!(linked, services, "every service has a {table}");
        }
        let classified: HashSet<&str> = rows
            .iter()
            .filter(|(t, _)| t.name == "attribute")
            .filter_map(|(_, r)| r["link_id"].as_str())
            .collect();
        assert_eq!(classified, services);
        let active = rows
            .iter()
            .filter(|(t, r)| t.name == "service" && r["status"] == "active")
            .count();
        assert!(
            active * 10 >= count("service") * 8,
            "most services are active"
        );
    }

    #[test]
    fn locations_lie_near_their_city() {
        for (table, row) in generate(&options(200, 9)) {
            if table.name != "location" {
                continue;
            }
            let (lat, lon) = (
                row["latitude"].as_f64().unwrap_or_default(),
                row["longitude"].as_f64().unwrap_or_default(),
            );
            let near = CITIES
                .iter()
                .any(|c| (c.latitude - lat).abs() < 0.2 && (c.longitude - lon).abs() < 0.35);
            assert!(near, "{lat},{lon} is far from every city");
        }
    }

    #[test]
    fn term_names_read_well_inside_sentences() {
        assert_eq!(
            in_sentence("CV and Interview Coaching"),
            "CV and interview coaching"
        );
        assert_eq!(
            in_sentence("English Language Classes"),
            "English language classes"
        );
        assert_eq!(
            sentence_list(&["food", "shelter", "legal aid"]),
            "food, shelter and legal aid"
        );
    }

    #[test]
    fn a_large_directory_streams() {
        let rows: Vec<_> = generate(&options(100_000, 1)).take(1_000).collect();
        assert_eq!(rows.len(), 1_000);
        assert_eq!(rows[0].0.name, "taxonomy");
    }
}
