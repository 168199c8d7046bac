"""Write small synthetic stand-ins for NOAA's GSOD 1980.tar.gz and 2020.tar.gz into the cwd.

seed003_gsod_actors.py needs the real yearly archives (one CSV per station, 28 columns), which
we cannot download here. These have the same layout and columns, with a handful of stations and
a known number of readings at or above 100 degrees:

    stations: 1980 has A B C D, 2020 has B C D E, so 3 stations in common (B C D)
    TEMP >= 100 at the common stations: 3 in 1980, 7 in 2020
    (stations A and E, not in common, have hot days too; they must not be counted)

Usage: python make_gsod_sample.py [directory]   (default: the current directory)
"""

import csv
import io
import os
import sys
import tarfile

COLUMNS = (
    "STATION",
    "DATE",
    "LATITUDE",
    "LONGITUDE",
    "ELEVATION",
    "NAME",
    "TEMP",
    "TEMP_ATTRIBUTES",
    "DEWP",
    "DEWP_ATTRIBUTES",
    "SLP",
    "SLP_ATTRIBUTES",
    "STP",
    "STP_ATTRIBUTES",
    "VISIB",
    "VISIB_ATTRIBUTES",
    "WDSP",
    "WDSP_ATTRIBUTES",
    "MXSPD",
    "GUST",
    "MAX",
    "MAX_ATTRIBUTES",
    "MIN",
    "MIN_ATTRIBUTES",
    "PRCP",
    "PRCP_ATTRIBUTES",
    "SNDP",
    "FRSHTT",
)

STATIONS = {
    "A": ("72386023169", "36.07", "-115.16", "664.5", "LAS VEGAS MCCARRAN INTERNATIONAL AIRPORT, NV US"),
    "B": ("72278023183", "33.43", "-112.00", "337.4", "PHOENIX SKY HARBOR INTERNATIONAL AIRPORT, AZ US"),
    "C": ("72259003927", "32.90", "-97.02", "171.3", "DALLAS FORT WORTH INTERNATIONAL AIRPORT, TX US"),
    "D": ("72295023174", "33.94", "-118.39", "29.6", "LOS ANGELES INTERNATIONAL AIRPORT, CA US"),
    "E": ("72381023114", "34.90", "-117.88", "705.6", "EDWARDS AFB, CA US"),
}

# Daily mean TEMP (degrees F) per station and year; ten days each.
TEMPS = {
    "1980": {
        "A": [101.2, 104.0, 99.9, 100.0, 102.5, 80.1, 75.3, 90.0, 88.8, 70.2],  # 4 hot, not common
        "B": [100.0, 98.7, 97.1, 95.0, 93.3, 91.0, 89.4, 85.5, 80.0, 79.9],  # 1 hot
        "C": [99.9, 100.4, 101.0, 96.2, 94.4, 92.1, 90.5, 88.8, 86.0, 84.3],  # 2 hot
        "D": [72.0, 73.1, 74.5, 70.9, 69.8, 71.2, 99.99, 75.0, 68.4, 67.7],  # 0 hot
    },
    "2020": {
        "B": [103.1, 105.2, 100.0, 99.0, 97.5, 96.4, 95.0, 92.2, 90.1, 88.0],  # 3 hot
        "C": [101.5, 100.1, 98.2, 97.0, 95.5, 93.3, 91.1, 90.0, 89.9, 85.0],  # 2 hot
        "D": [100.2, 102.8, 80.3, 79.0, 78.1, 77.7, 76.6, 75.5, 74.4, 73.3],  # 2 hot
        "E": [108.0, 107.1, 106.3, 105.5, 104.2, 99.0, 95.0, 90.0, 85.0, 80.0],  # 5 hot, not common
    },
}

EXPECTED = {"common_stations": 3, "1980": 3, "2020": 7}


def station_csv(year: str, key: str, temps: list[float]) -> bytes:
    """One station's year as GSOD writes it: a quoted header row, then one row per day."""
    station, lat, lon, elev, name = STATIONS[key]
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(COLUMNS)
    for day, temp in enumerate(temps, start=1):
        writer.writerow(
            [
                station,
                f"{year}-07-{day:02d}",
                lat,
                lon,
                elev,
                name,
                f"{temp:.1f}" if round(temp, 1) == temp else f"{temp:.2f}",
                "24",
                "45.3",
                "24",
                "1012.3",
                "24",
                "965.1",
                "24",
                "10.0",
                "24",
                "5.2",
                "24",
                "12.0",
                "999.9",
                f"{temp + 12:.1f}",
                " ",
                f"{temp - 15:.1f}",
                " ",
                "0.00",
                "G",
                "999.9",
                "000000",
            ]
        )
    return out.getvalue().encode()


def write_year(directory: str, year: str) -> str:
    """Write ``<year>.tar.gz`` with one ``<station>.csv`` member per station; return its path."""
    path = os.path.join(directory, f"{year}.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        for key, temps in TEMPS[year].items():
            payload = station_csv(year, key, temps)
            info = tarfile.TarInfo(f"{STATIONS[key][0]}.csv")
            info.size = len(payload)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(payload))
    return path


def main() -> None:
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    for year in TEMPS:
        print("wrote", write_year(directory, year))
    print("expected:", EXPECTED)


if __name__ == "__main__":
    main()
