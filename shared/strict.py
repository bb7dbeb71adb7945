"""The base of every model a client sends: unknown fields and non-finite numbers refused."""

from pydantic import BaseModel, ConfigDict

# Printable text only: control characters (NUL above all) have no place in a name, and
# PostgreSQL refuses to store a NUL.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"


class StrictModel(BaseModel):
    # Unknown fields are an error, so a typo never silently trains the wrong thing; JSON's
    # Infinity and NaN are refused, since no hyperparameter means them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
