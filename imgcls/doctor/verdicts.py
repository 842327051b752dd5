"""The doctor's verdicts: one result line per check (its findings, OK / WARN / FAIL, and a summary
in words), and which checks fail the run (--fail-on).

Each result is read off a DoctorReport (imgcls.doctor.findings), which asks for them through
check_results; nothing here imports the findings, so the arrow points one way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from imgcls.data.files import SPLIT_NAMES
from imgcls.errors import ImgclsError

CHECKS = ("corrupt", "mismatch", "duplicates", "near-duplicates", "leakage", "imbalance", "tiny", "label-errors")
FILE_CHECKS = ("corrupt", "mismatch")


@dataclass
class CheckResult:
    name: str
    findings: int
    summary: str
    applies: bool = True

    def status(self, fail_on) -> str:
        if not self.applies:
            return "n/a"
        return "OK" if not self.findings else "FAIL" if self.name in fail_on else "WARN"


def check_results(r) -> list[CheckResult]:
    """One result per check of a DoctorReport, in CHECKS order."""
    return [_corrupt_result(r), _mismatch_result(r), _duplicates_result(r), _near_result(r),
            _leakage_result(r), _imbalance_result(r), _tiny_result(r), _label_result(r)]


def parse_fail_on(text: str | None) -> tuple[str, ...]:
    """Check names from a comma list; "any" stands for all of them; unknown names are an error."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    unknown = sorted(set(names) - set(CHECKS) - {"any"})
    if unknown:
        raise ImgclsError(f"--fail-on: unknown check {', '.join(unknown)}; valid: {', '.join(CHECKS)}, any")
    return CHECKS if "any" in names else tuple(n for n in CHECKS if n in names)


# -- one result line per check --------------------------------------------------------------------

def _n(count: int, noun: str) -> str:
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + ("es" if noun.endswith("s") else "s")
    return f"{count:,} {noun if count == 1 else plural}"


def _by_splits(items) -> str:
    counts = Counter(item.splits for item in items)
    order = sorted(counts, key=lambda key: ("-" in key, key.count("-"), [SPLIT_NAMES.index(s) for s in key.split("-")]))
    return ", ".join(f"{key} {counts[key]:,}" for key in order)


def _corrupt_result(r) -> CheckResult:
    if r.files is None:
        return CheckResult("corrupt", 0, "not a dataset of files: nothing to open", applies=False)
    return CheckResult("corrupt", len(r.unreadable), f"{len(r.unreadable):,} of {_n(len(r.files), 'file')} unreadable")


def _mismatch_result(r) -> CheckResult:
    if r.files is None:
        return CheckResult("mismatch", 0, "not a dataset of files: no extensions", applies=False)
    return CheckResult("mismatch", len(r.mismatched), f"{_n(len(r.mismatched), 'file')} whose content is not what "
                                                      "the extension says")


def _duplicates_result(r) -> CheckResult:
    copies = sum(len(g.images) - 1 for g in r.duplicates)
    detail = f": {_by_splits(r.duplicates)}" if r.duplicates else ""
    conflicting = sum(g.conflicting for g in r.duplicates)
    labels = f"; {conflicting:,} with conflicting labels" if conflicting else ""
    return CheckResult("duplicates", len(r.duplicates),
                       f"{_n(len(r.duplicates), 'group')} of identical images, {_n(copies, 'redundant copy')}"
                       f"{detail}{labels}")


def _near_result(r) -> CheckResult:
    detail = f": {_by_splits(r.near_duplicates)}" if r.near_duplicates else ""
    return CheckResult("near-duplicates", len(r.near_duplicates),
                       f"{_n(len(r.near_duplicates), 'pair')} within {r.near:g} {r.scale}{detail}")


def _leakage_result(r) -> CheckResult:
    groups = sum(g.leaked for g in r.duplicates)
    detail = f": {_by_splits(r.leakage)}" if r.leakage else ""
    return CheckResult("leakage", len(r.leakage), f"{_n(groups, 'identical group')} and "
                                                  f"{_n(len(r.leakage) - groups, 'near pair')} span splits{detail}")


def _imbalance_result(r) -> CheckResult:
    counts = r.class_counts["train"]
    ratio = r.imbalance["train"]
    largest, smallest = max(counts, key=counts.get), min(counts, key=counts.get)
    spread = (f"largest {largest} {counts[largest]:,} / smallest {smallest} {counts[smallest]:,} = {ratio:.1f}x"
              if ratio > 1 else f"every class {counts[largest]:,}")
    return CheckResult("imbalance", int(ratio > r.options.imbalance),
                       f"train: {spread} (warns over {r.options.imbalance:g}x)")


def _label_result(r) -> CheckResult:
    if r.label_errors is None:
        return CheckResult("label-errors", 0, r.label_problem or "not looked for (--label-errors)", applies=False)
    images = sum(r.sizes.values())
    return CheckResult("label-errors", len(r.label_errors),
                       f"{_n(len(r.label_errors), 'likely label error')} among {images:,} images (out-of-fold "
                       f"{r.options.label_model} on {r.options.features}, {r.options.folds} folds, cleanlab)")


def _tiny_result(r) -> CheckResult:
    tiny = r.tiny_classes
    listed = ", ".join(f"{name} ({n})" for name, n in sorted(tiny.items(), key=lambda kv: kv[1]))
    return CheckResult("tiny", len(tiny), f"{_n(len(tiny), 'class')} under {r.options.tiny} training images"
                                          + (f": {listed}" if tiny else "")
                                          + (" (too few to split as training would)" if r.split_problem else ""))
