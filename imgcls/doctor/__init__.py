"""`imgcls doctor`: corrupt files, wrong extensions, duplicates, leakage between splits and class
balance, reported in the terminal, doctor.json and doctor.html; files quarantined only on request."""

from imgcls.doctor.checks import (CHECKS, DoctorOptions, DoctorReport, DuplicateGroup, NearPair, check_quarantine,
                                  diagnose, parse_fail_on, quarantine, quarantine_plan)
from imgcls.doctor.report import print_report, write_report

__all__ = ["CHECKS", "DoctorOptions", "DoctorReport", "DuplicateGroup", "NearPair", "check_quarantine", "diagnose",
           "parse_fail_on", "print_report", "quarantine", "quarantine_plan", "write_report"]
