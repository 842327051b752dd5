"""`imgcls doctor`: corrupt files, wrong extensions, duplicates, leakage between splits, class
balance and (on request) likely label errors, reported in the terminal, doctor.json and
doctor.html; files quarantined only on request, labels never changed."""

from imgcls.doctor.detection import diagnose
from imgcls.doctor.findings import DoctorOptions, DoctorReport, DuplicateGroup, NearPair
from imgcls.doctor.fixes import check_quarantine, quarantine, quarantine_plan
from imgcls.doctor.labels import LabelError, find_label_errors, out_of_fold_probabilities, write_relabel_csv
from imgcls.doctor.report import print_report, write_report
from imgcls.doctor.verdicts import CHECKS, parse_fail_on

__all__ = ["CHECKS", "DoctorOptions", "DoctorReport", "DuplicateGroup", "NearPair", "check_quarantine", "diagnose",
           "find_label_errors", "LabelError", "out_of_fold_probabilities", "parse_fail_on", "print_report",
           "quarantine", "quarantine_plan", "write_relabel_csv", "write_report"]
