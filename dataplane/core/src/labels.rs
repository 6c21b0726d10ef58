//! Enums whose variants double as metric labels: `ALL`, `COUNT`, `index()`
//! for per-variant counter arrays, `as_str()` for the label, and `Display`.

/// Declares a fieldless enum whose variants are counted in arrays and
/// exported as metric labels. Each variant gives its snake_case label and,
/// optionally, a human-readable text for `Display` (the label otherwise).
macro_rules! labelled_enum {
    ($(#[$doc:meta])* $name:ident {
        $($(#[$vdoc:meta])* $variant:ident => $label:literal $(, $text:literal)?;)+
    }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every variant, in declaration order (`ALL[v.index()] == v`).
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            /// Number of variants.
            pub const COUNT: usize = Self::ALL.len();

            /// Position in [`Self::ALL`], for per-variant counter arrays.
            #[inline]
            pub fn index(self) -> usize {
                self as usize
            }

            /// The stable snake_case label used in metrics.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self {
                    $($name::$variant => $crate::labels::display_text!($label $(, $text)?),)+
                })
            }
        }
    };
}

/// The `Display` text of a variant: its own text if it has one, else its label.
macro_rules! display_text {
    ($label:literal) => {
        $label
    };
    ($label:literal, $text:literal) => {
        $text
    };
}

pub(crate) use {display_text, labelled_enum};
