//! ISO 3166-1 alpha-2 countries with their continent (MaxMind/GeoNames convention) and a
//! representative point.
//!
//! The table holds all 249 officially assigned ISO 3166-1 alpha-2 codes plus the user-assigned
//! `XK` (Kosovo), which MaxMind and DB-IP both emit: 250 rows.
//!
//! * `continent` is the code MaxMind puts in `continent.code` for that country. MaxMind follows
//!   the GeoNames `countryInfo.txt` assignment, so transcontinental countries land where GeoNames
//!   puts them: `RU`, `CY` and `XK` are `EU`; `TR`, `GE`, `AM`, `AZ` and `KZ` are `AS`; `EG` is
//!   `AF`; `PA` and `TT` are `NA`; `TL` is `OC`; `FK` is `SA`; the sub-Antarctic territories
//!   `BV`, `GS`, `HM` and `TF` are `AN`.
//! * `lat`/`lon` (degrees, south and west negative) is a representative point meant for
//!   "nearest region by great-circle distance", not a geometric centroid. It is the capital city
//!   (the seat of government where that differs from the official capital, e.g. La Paz for
//!   Bolivia, Ramallah for Palestine) or, for territories without one, the main settlement or
//!   station. The one deliberate exception is `US`, which uses the 2020 census mean centre of
//!   population (near Hartville, Missouri) instead of Washington, D.C., so that a US address of
//!   unknown state is not always pulled to the east coast. Two decimals (about 1 km).

/// One ISO 3166-1 country.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CountryInfo {
    /// ISO 3166-1 alpha-2 code, upper case, e.g. `"IE"`.
    pub code: &'static str,
    /// English short name, e.g. `"Ireland"`.
    pub name: &'static str,
    /// MaxMind continent code, one of [`CONTINENTS`], e.g. `"EU"`.
    pub continent: &'static str,
    /// Latitude of the representative point, degrees north (south is negative).
    pub lat: f64,
    /// Longitude of the representative point, degrees east (west is negative).
    pub lon: f64,
}

/// The seven continent codes MaxMind uses, with English names.
pub const CONTINENTS: &[(&str, &str)] = &[
    ("AF", "Africa"),
    ("AN", "Antarctica"),
    ("AS", "Asia"),
    ("EU", "Europe"),
    ("NA", "North America"),
    ("OC", "Oceania"),
    ("SA", "South America"),
];

const fn c(
    code: &'static str,
    name: &'static str,
    continent: &'static str,
    lat: f64,
    lon: f64,
) -> CountryInfo {
    CountryInfo {
        code,
        name,
        continent,
        lat,
        lon,
    }
}

/// Sorted by code (binary search).
pub const COUNTRIES: &[CountryInfo] = &[
    c("AD", "Andorra", "EU", 42.51, 1.52), // Andorra la Vella
    c("AE", "United Arab Emirates", "AS", 24.45, 54.38), // Abu Dhabi
    c("AF", "Afghanistan", "AS", 34.53, 69.17), // Kabul
    c("AG", "Antigua and Barbuda", "NA", 17.12, -61.85), // St. John's
    c("AI", "Anguilla", "NA", 18.22, -63.06), // The Valley
    c("AL", "Albania", "EU", 41.33, 19.82), // Tirana
    c("AM", "Armenia", "AS", 40.18, 44.51), // Yerevan
    c("AO", "Angola", "AF", -8.84, 13.23), // Luanda
    c("AQ", "Antarctica", "AN", -77.85, 166.67), // McMurdo Station
    c("AR", "Argentina", "SA", -34.60, -58.38), // Buenos Aires
    c("AS", "American Samoa", "OC", -14.28, -170.70), // Pago Pago
    c("AT", "Austria", "EU", 48.21, 16.37), // Vienna
    c("AU", "Australia", "OC", -35.28, 149.13), // Canberra
    c("AW", "Aruba", "NA", 12.52, -70.03), // Oranjestad
    c("AX", "Åland Islands", "EU", 60.10, 19.94), // Mariehamn
    c("AZ", "Azerbaijan", "AS", 40.41, 49.87), // Baku
    c("BA", "Bosnia and Herzegovina", "EU", 43.86, 18.41), // Sarajevo
    c("BB", "Barbados", "NA", 13.10, -59.62), // Bridgetown
    c("BD", "Bangladesh", "AS", 23.81, 90.41), // Dhaka
    c("BE", "Belgium", "EU", 50.85, 4.35), // Brussels
    c("BF", "Burkina Faso", "AF", 12.37, -1.52), // Ouagadougou
    c("BG", "Bulgaria", "EU", 42.70, 23.32), // Sofia
    c("BH", "Bahrain", "AS", 26.23, 50.59), // Manama
    c("BI", "Burundi", "AF", -3.43, 29.92), // Gitega
    c("BJ", "Benin", "AF", 6.50, 2.63),    // Porto-Novo
    c("BL", "Saint Barthélemy", "NA", 17.90, -62.85), // Gustavia
    c("BM", "Bermuda", "NA", 32.29, -64.78), // Hamilton
    c("BN", "Brunei", "AS", 4.90, 114.94), // Bandar Seri Begawan
    c("BO", "Bolivia", "SA", -16.50, -68.15), // La Paz (seat of government)
    c("BQ", "Caribbean Netherlands", "NA", 12.15, -68.27), // Kralendijk, Bonaire
    c("BR", "Brazil", "SA", -15.79, -47.88), // Brasília
    c("BS", "Bahamas", "NA", 25.05, -77.35), // Nassau
    c("BT", "Bhutan", "AS", 27.47, 89.64), // Thimphu
    c("BV", "Bouvet Island", "AN", -54.42, 3.36), // uninhabited
    c("BW", "Botswana", "AF", -24.65, 25.91), // Gaborone
    c("BY", "Belarus", "EU", 53.90, 27.56), // Minsk
    c("BZ", "Belize", "NA", 17.25, -88.76), // Belmopan
    c("CA", "Canada", "NA", 45.42, -75.70), // Ottawa
    c("CC", "Cocos (Keeling) Islands", "AS", -12.19, 96.83), // West Island
    c("CD", "DR Congo", "AF", -4.32, 15.31), // Kinshasa
    c("CF", "Central African Republic", "AF", 4.36, 18.56), // Bangui
    c("CG", "Republic of the Congo", "AF", -4.27, 15.28), // Brazzaville
    c("CH", "Switzerland", "EU", 46.95, 7.45), // Bern
    c("CI", "Côte d'Ivoire", "AF", 6.82, -5.28), // Yamoussoukro
    c("CK", "Cook Islands", "OC", -21.21, -159.78), // Avarua
    c("CL", "Chile", "SA", -33.45, -70.67), // Santiago
    c("CM", "Cameroon", "AF", 3.85, 11.50), // Yaoundé
    c("CN", "China", "AS", 39.90, 116.41), // Beijing
    c("CO", "Colombia", "SA", 4.71, -74.07), // Bogotá
    c("CR", "Costa Rica", "NA", 9.93, -84.08), // San José
    c("CU", "Cuba", "NA", 23.11, -82.37),  // Havana
    c("CV", "Cabo Verde", "AF", 14.93, -23.51), // Praia
    c("CW", "Curaçao", "NA", 12.11, -68.93), // Willemstad
    c("CX", "Christmas Island", "OC", -10.42, 105.68), // Flying Fish Cove
    c("CY", "Cyprus", "EU", 35.17, 33.36), // Nicosia
    c("CZ", "Czechia", "EU", 50.08, 14.44), // Prague
    c("DE", "Germany", "EU", 52.52, 13.40), // Berlin
    c("DJ", "Djibouti", "AF", 11.59, 43.15), // Djibouti
    c("DK", "Denmark", "EU", 55.68, 12.57), // Copenhagen
    c("DM", "Dominica", "NA", 15.30, -61.39), // Roseau
    c("DO", "Dominican Republic", "NA", 18.49, -69.93), // Santo Domingo
    c("DZ", "Algeria", "AF", 36.75, 3.06), // Algiers
    c("EC", "Ecuador", "SA", -0.18, -78.47), // Quito
    c("EE", "Estonia", "EU", 59.44, 24.75), // Tallinn
    c("EG", "Egypt", "AF", 30.04, 31.24),  // Cairo
    c("EH", "Western Sahara", "AF", 27.15, -13.20), // Laayoune
    c("ER", "Eritrea", "AF", 15.33, 38.93), // Asmara
    c("ES", "Spain", "EU", 40.42, -3.70),  // Madrid
    c("ET", "Ethiopia", "AF", 9.03, 38.74), // Addis Ababa
    c("FI", "Finland", "EU", 60.17, 24.94), // Helsinki
    c("FJ", "Fiji", "OC", -18.14, 178.44), // Suva
    c("FK", "Falkland Islands", "SA", -51.70, -57.86), // Stanley
    c("FM", "Micronesia", "OC", 6.92, 158.16), // Palikir
    c("FO", "Faroe Islands", "EU", 62.01, -6.77), // Tórshavn
    c("FR", "France", "EU", 48.86, 2.35),  // Paris
    c("GA", "Gabon", "AF", 0.39, 9.45),    // Libreville
    c("GB", "United Kingdom", "EU", 51.51, -0.13), // London
    c("GD", "Grenada", "NA", 12.05, -61.75), // St. George's
    c("GE", "Georgia", "AS", 41.72, 44.79), // Tbilisi
    c("GF", "French Guiana", "SA", 4.94, -52.33), // Cayenne
    c("GG", "Guernsey", "EU", 49.46, -2.54), // St Peter Port
    c("GH", "Ghana", "AF", 5.60, -0.19),   // Accra
    c("GI", "Gibraltar", "EU", 36.14, -5.35), // Gibraltar
    c("GL", "Greenland", "NA", 64.18, -51.72), // Nuuk
    c("GM", "Gambia", "AF", 13.45, -16.58), // Banjul
    c("GN", "Guinea", "AF", 9.54, -13.68), // Conakry
    c("GP", "Guadeloupe", "NA", 16.00, -61.73), // Basse-Terre
    c("GQ", "Equatorial Guinea", "AF", 3.75, 8.78), // Malabo
    c("GR", "Greece", "EU", 37.98, 23.73), // Athens
    c(
        "GS",
        "South Georgia and the South Sandwich Islands",
        "AN",
        -54.28,
        -36.51,
    ), // Grytviken
    c("GT", "Guatemala", "NA", 14.63, -90.51), // Guatemala City
    c("GU", "Guam", "OC", 13.47, 144.75),  // Hagåtña
    c("GW", "Guinea-Bissau", "AF", 11.86, -15.60), // Bissau
    c("GY", "Guyana", "SA", 6.80, -58.16), // Georgetown
    c("HK", "Hong Kong", "AS", 22.32, 114.17), // Hong Kong
    c(
        "HM",
        "Heard Island and McDonald Islands",
        "AN",
        -53.10,
        73.52,
    ), // uninhabited
    c("HN", "Honduras", "NA", 14.07, -87.21), // Tegucigalpa
    c("HR", "Croatia", "EU", 45.81, 15.98), // Zagreb
    c("HT", "Haiti", "NA", 18.54, -72.34), // Port-au-Prince
    c("HU", "Hungary", "EU", 47.50, 19.04), // Budapest
    c("ID", "Indonesia", "AS", -6.21, 106.85), // Jakarta
    c("IE", "Ireland", "EU", 53.35, -6.26), // Dublin
    c("IL", "Israel", "AS", 31.77, 35.21), // Jerusalem
    c("IM", "Isle of Man", "EU", 54.15, -4.48), // Douglas
    c("IN", "India", "AS", 28.61, 77.21),  // New Delhi
    c("IO", "British Indian Ocean Territory", "AS", -7.31, 72.41), // Diego Garcia
    c("IQ", "Iraq", "AS", 33.31, 44.37),   // Baghdad
    c("IR", "Iran", "AS", 35.69, 51.39),   // Tehran
    c("IS", "Iceland", "EU", 64.15, -21.94), // Reykjavík
    c("IT", "Italy", "EU", 41.90, 12.50),  // Rome
    c("JE", "Jersey", "EU", 49.18, -2.11), // Saint Helier
    c("JM", "Jamaica", "NA", 18.00, -76.79), // Kingston
    c("JO", "Jordan", "AS", 31.95, 35.93), // Amman
    c("JP", "Japan", "AS", 35.68, 139.69), // Tokyo
    c("KE", "Kenya", "AF", -1.29, 36.82),  // Nairobi
    c("KG", "Kyrgyzstan", "AS", 42.87, 74.59), // Bishkek
    c("KH", "Cambodia", "AS", 11.56, 104.92), // Phnom Penh
    c("KI", "Kiribati", "OC", 1.33, 172.98), // South Tarawa
    c("KM", "Comoros", "AF", -11.70, 43.26), // Moroni
    c("KN", "Saint Kitts and Nevis", "NA", 17.30, -62.73), // Basseterre
    c("KP", "North Korea", "AS", 39.04, 125.76), // Pyongyang
    c("KR", "South Korea", "AS", 37.57, 126.98), // Seoul
    c("KW", "Kuwait", "AS", 29.37, 47.98), // Kuwait City
    c("KY", "Cayman Islands", "NA", 19.29, -81.38), // George Town
    c("KZ", "Kazakhstan", "AS", 51.17, 71.45), // Astana
    c("LA", "Laos", "AS", 17.97, 102.60),  // Vientiane
    c("LB", "Lebanon", "AS", 33.89, 35.50), // Beirut
    c("LC", "Saint Lucia", "NA", 14.01, -60.99), // Castries
    c("LI", "Liechtenstein", "EU", 47.14, 9.52), // Vaduz
    c("LK", "Sri Lanka", "AS", 6.93, 79.86), // Colombo
    c("LR", "Liberia", "AF", 6.30, -10.80), // Monrovia
    c("LS", "Lesotho", "AF", -29.31, 27.48), // Maseru
    c("LT", "Lithuania", "EU", 54.69, 25.28), // Vilnius
    c("LU", "Luxembourg", "EU", 49.61, 6.13), // Luxembourg
    c("LV", "Latvia", "EU", 56.95, 24.11), // Riga
    c("LY", "Libya", "AF", 32.89, 13.19),  // Tripoli
    c("MA", "Morocco", "AF", 34.02, -6.84), // Rabat
    c("MC", "Monaco", "EU", 43.74, 7.42),  // Monaco
    c("MD", "Moldova", "EU", 47.01, 28.86), // Chișinău
    c("ME", "Montenegro", "EU", 42.44, 19.26), // Podgorica
    c("MF", "Saint Martin", "NA", 18.07, -63.08), // Marigot
    c("MG", "Madagascar", "AF", -18.91, 47.54), // Antananarivo
    c("MH", "Marshall Islands", "OC", 7.09, 171.38), // Majuro
    c("MK", "North Macedonia", "EU", 42.00, 21.43), // Skopje
    c("ML", "Mali", "AF", 12.64, -8.00),   // Bamako
    c("MM", "Myanmar", "AS", 19.75, 96.13), // Naypyidaw
    c("MN", "Mongolia", "AS", 47.89, 106.91), // Ulaanbaatar
    c("MO", "Macao", "AS", 22.20, 113.55), // Macao
    c("MP", "Northern Mariana Islands", "OC", 15.19, 145.75), // Saipan
    c("MQ", "Martinique", "NA", 14.61, -61.07), // Fort-de-France
    c("MR", "Mauritania", "AF", 18.09, -15.98), // Nouakchott
    c("MS", "Montserrat", "NA", 16.79, -62.21), // Brades (de facto)
    c("MT", "Malta", "EU", 35.90, 14.51),  // Valletta
    c("MU", "Mauritius", "AF", -20.16, 57.50), // Port Louis
    c("MV", "Maldives", "AS", 4.18, 73.51), // Malé
    c("MW", "Malawi", "AF", -13.96, 33.79), // Lilongwe
    c("MX", "Mexico", "NA", 19.43, -99.13), // Mexico City
    c("MY", "Malaysia", "AS", 3.15, 101.69), // Kuala Lumpur
    c("MZ", "Mozambique", "AF", -25.97, 32.57), // Maputo
    c("NA", "Namibia", "AF", -22.56, 17.08), // Windhoek
    c("NC", "New Caledonia", "OC", -22.27, 166.45), // Nouméa
    c("NE", "Niger", "AF", 13.51, 2.11),   // Niamey
    c("NF", "Norfolk Island", "OC", -29.06, 167.96), // Kingston
    c("NG", "Nigeria", "AF", 9.06, 7.49),  // Abuja
    c("NI", "Nicaragua", "NA", 12.13, -86.25), // Managua
    c("NL", "Netherlands", "EU", 52.37, 4.90), // Amsterdam
    c("NO", "Norway", "EU", 59.91, 10.75), // Oslo
    c("NP", "Nepal", "AS", 27.72, 85.32),  // Kathmandu
    c("NR", "Nauru", "OC", -0.55, 166.92), // Yaren
    c("NU", "Niue", "OC", -19.06, -169.92), // Alofi
    c("NZ", "New Zealand", "OC", -41.29, 174.78), // Wellington
    c("OM", "Oman", "AS", 23.59, 58.41),   // Muscat
    c("PA", "Panama", "NA", 8.98, -79.52), // Panama City
    c("PE", "Peru", "SA", -12.05, -77.04), // Lima
    c("PF", "French Polynesia", "OC", -17.54, -149.57), // Papeete
    c("PG", "Papua New Guinea", "OC", -9.44, 147.18), // Port Moresby
    c("PH", "Philippines", "AS", 14.60, 120.98), // Manila
    c("PK", "Pakistan", "AS", 33.69, 73.06), // Islamabad
    c("PL", "Poland", "EU", 52.23, 21.01), // Warsaw
    c("PM", "Saint Pierre and Miquelon", "NA", 46.78, -56.17), // Saint-Pierre
    c("PN", "Pitcairn Islands", "OC", -25.07, -130.10), // Adamstown
    c("PR", "Puerto Rico", "NA", 18.47, -66.11), // San Juan
    c("PS", "Palestine", "AS", 31.90, 35.20), // Ramallah
    c("PT", "Portugal", "EU", 38.72, -9.14), // Lisbon
    c("PW", "Palau", "OC", 7.50, 134.62),  // Ngerulmud, Melekeok
    c("PY", "Paraguay", "SA", -25.26, -57.58), // Asunción
    c("QA", "Qatar", "AS", 25.29, 51.53),  // Doha
    c("RE", "Réunion", "AF", -20.88, 55.45), // Saint-Denis
    c("RO", "Romania", "EU", 44.43, 26.10), // Bucharest
    c("RS", "Serbia", "EU", 44.82, 20.46), // Belgrade
    c("RU", "Russia", "EU", 55.76, 37.62), // Moscow
    c("RW", "Rwanda", "AF", -1.95, 30.06), // Kigali
    c("SA", "Saudi Arabia", "AS", 24.71, 46.68), // Riyadh
    c("SB", "Solomon Islands", "OC", -9.43, 159.95), // Honiara
    c("SC", "Seychelles", "AF", -4.62, 55.45), // Victoria
    c("SD", "Sudan", "AF", 15.50, 32.56),  // Khartoum
    c("SE", "Sweden", "EU", 59.33, 18.07), // Stockholm
    c("SG", "Singapore", "AS", 1.29, 103.85), // Singapore
    c(
        "SH",
        "Saint Helena, Ascension and Tristan da Cunha",
        "AF",
        -15.93,
        -5.72,
    ), // Jamestown
    c("SI", "Slovenia", "EU", 46.06, 14.51), // Ljubljana
    c("SJ", "Svalbard and Jan Mayen", "EU", 78.22, 15.64), // Longyearbyen
    c("SK", "Slovakia", "EU", 48.15, 17.11), // Bratislava
    c("SL", "Sierra Leone", "AF", 8.48, -13.23), // Freetown
    c("SM", "San Marino", "EU", 43.94, 12.45), // San Marino
    c("SN", "Senegal", "AF", 14.69, -17.44), // Dakar
    c("SO", "Somalia", "AF", 2.04, 45.34), // Mogadishu
    c("SR", "Suriname", "SA", 5.85, -55.20), // Paramaribo
    c("SS", "South Sudan", "AF", 4.85, 31.58), // Juba
    c("ST", "São Tomé and Príncipe", "AF", 0.34, 6.73), // São Tomé
    c("SV", "El Salvador", "NA", 13.69, -89.22), // San Salvador
    c("SX", "Sint Maarten", "NA", 18.03, -63.05), // Philipsburg
    c("SY", "Syria", "AS", 33.51, 36.28),  // Damascus
    c("SZ", "Eswatini", "AF", -26.32, 31.13), // Mbabane
    c("TC", "Turks and Caicos Islands", "NA", 21.46, -71.14), // Cockburn Town
    c("TD", "Chad", "AF", 12.11, 15.04),   // N'Djamena
    c("TF", "French Southern Territories", "AN", -49.35, 70.22), // Port-aux-Français
    c("TG", "Togo", "AF", 6.13, 1.22),     // Lomé
    c("TH", "Thailand", "AS", 13.76, 100.50), // Bangkok
    c("TJ", "Tajikistan", "AS", 38.56, 68.77), // Dushanbe
    c("TK", "Tokelau", "OC", -9.17, -171.82), // Nukunonu
    c("TL", "Timor-Leste", "OC", -8.56, 125.58), // Dili
    c("TM", "Turkmenistan", "AS", 37.95, 58.38), // Ashgabat
    c("TN", "Tunisia", "AF", 36.81, 10.18), // Tunis
    c("TO", "Tonga", "OC", -21.14, -175.20), // Nukuʻalofa
    c("TR", "Türkiye", "AS", 39.93, 32.85), // Ankara
    c("TT", "Trinidad and Tobago", "NA", 10.66, -61.51), // Port of Spain
    c("TV", "Tuvalu", "OC", -8.52, 179.19), // Funafuti
    c("TW", "Taiwan", "AS", 25.03, 121.57), // Taipei
    c("TZ", "Tanzania", "AF", -6.17, 35.74), // Dodoma
    c("UA", "Ukraine", "EU", 50.45, 30.52), // Kyiv
    c("UG", "Uganda", "AF", 0.35, 32.58),  // Kampala
    c(
        "UM",
        "United States Minor Outlying Islands",
        "OC",
        19.28,
        166.65,
    ), // Wake Island
    c("US", "United States", "NA", 37.42, -92.40), // mean centre of population (2020)
    c("UY", "Uruguay", "SA", -34.90, -56.19), // Montevideo
    c("UZ", "Uzbekistan", "AS", 41.30, 69.24), // Tashkent
    c("VA", "Vatican City", "EU", 41.90, 12.45), // Vatican City
    c(
        "VC",
        "Saint Vincent and the Grenadines",
        "NA",
        13.16,
        -61.23,
    ), // Kingstown
    c("VE", "Venezuela", "SA", 10.48, -66.90), // Caracas
    c("VG", "British Virgin Islands", "NA", 18.43, -64.62), // Road Town
    c("VI", "U.S. Virgin Islands", "NA", 18.34, -64.93), // Charlotte Amalie
    c("VN", "Vietnam", "AS", 21.03, 105.85), // Hanoi
    c("VU", "Vanuatu", "OC", -17.74, 168.31), // Port Vila
    c("WF", "Wallis and Futuna", "OC", -13.28, -176.18), // Mata-Utu
    c("WS", "Samoa", "OC", -13.83, -171.76), // Apia
    c("XK", "Kosovo", "EU", 42.66, 21.17), // Pristina
    c("YE", "Yemen", "AS", 15.35, 44.21),  // Sanaa
    c("YT", "Mayotte", "AF", -12.78, 45.23), // Mamoudzou
    c("ZA", "South Africa", "AF", -25.75, 28.19), // Pretoria
    c("ZM", "Zambia", "AF", -15.39, 28.32), // Lusaka
    c("ZW", "Zimbabwe", "AF", -17.83, 31.05), // Harare
];

/// Looks up an upper-case alpha-2 code; None for anything else.
#[must_use]
pub fn country(code: &str) -> Option<&'static CountryInfo> {
    // A direct index by the two letters: resolution looks a country up on every GeoIP
    // answer, and a binary search over random codes mispredicts its branches (the
    // benchmark measured ~70 ns for the search, a few ns for this).
    let slot = match code.as_bytes() {
        [a @ b'A'..=b'Z', b @ b'A'..=b'Z'] => (a - b'A') as usize * 26 + (b - b'A') as usize,
        _ => return None,
    };
    match COUNTRY_INDEX[slot] {
        NO_COUNTRY => None,
        i => Some(&COUNTRIES[i as usize]),
    }
}

const NO_COUNTRY: u16 = u16::MAX;

/// Index into [`COUNTRIES`] by `(first letter - 'A') * 26 + (second letter - 'A')`.
static COUNTRY_INDEX: [u16; 26 * 26] = build_country_index();

const fn build_country_index() -> [u16; 26 * 26] {
    let mut index = [NO_COUNTRY; 26 * 26];
    let mut i = 0;
    while i < COUNTRIES.len() {
        let code = COUNTRIES[i].code.as_bytes();
        index[(code[0] - b'A') as usize * 26 + (code[1] - b'A') as usize] = i as u16;
        i += 1;
    }
    index
}

/// True when `code` is one of CONTINENTS.
#[must_use]
pub fn is_continent(code: &str) -> bool {
    CONTINENTS.iter().any(|&(known, _)| known == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictly_sorted_by_code() {
        for pair in COUNTRIES.windows(2) {
            assert!(
                pair[0].code < pair[1].code,
                "{} must sort before {}",
                pair[0].code,
                pair[1].code
            );
        }
    }

    #[test]
    fn has_all_249_iso_codes_plus_kosovo() {
        assert_eq!(COUNTRIES.len(), 250);
        assert!(country("XK").is_some());
    }

    #[test]
    fn codes_are_two_upper_case_letters() {
        for info in COUNTRIES {
            assert_eq!(info.code.len(), 2, "{}", info.code);
            assert!(
                info.code.bytes().all(|b| b.is_ascii_uppercase()),
                "{}",
                info.code
            );
            assert!(!info.name.is_empty(), "{}", info.code);
        }
    }

    #[test]
    fn continents_are_known() {
        assert_eq!(CONTINENTS.len(), 7);
        for info in COUNTRIES {
            assert!(
                is_continent(info.continent),
                "{}: {}",
                info.code,
                info.continent
            );
        }
        assert!(!is_continent("XX"));
        assert!(!is_continent("eu"));
    }

    #[test]
    fn coordinates_in_range() {
        for info in COUNTRIES {
            assert!((-90.0..=90.0).contains(&info.lat), "{}", info.code);
            assert!((-180.0..=180.0).contains(&info.lon), "{}", info.code);
        }
    }

    #[test]
    fn lookup() {
        let ie = country("IE").expect("IE is in the table");
        assert_eq!(ie.code, "IE");
        assert_eq!(ie.name, "Ireland");
        assert_eq!(ie.continent, "EU");
        assert_eq!(country("ie"), None);
        assert_eq!(country("ZZ"), None);
        assert_eq!(country(""), None);
        assert_eq!(country("IRL"), None);
        assert_eq!(country("AD").map(|c| c.code), Some("AD"));
        assert_eq!(country("ZW").map(|c| c.code), Some("ZW"));
    }

    #[test]
    fn transcontinental_follow_maxmind() {
        let cont = |code| country(code).map(|c| c.continent);
        assert_eq!(cont("RU"), Some("EU"));
        assert_eq!(cont("CY"), Some("EU"));
        assert_eq!(cont("TR"), Some("AS"));
        assert_eq!(cont("EG"), Some("AF"));
        assert_eq!(cont("PA"), Some("NA"));
        assert_eq!(cont("TT"), Some("NA"));
    }
}
