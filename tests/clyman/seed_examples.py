"""The Object API examples of seed 004 (CLyman v2.0.x docs), copied verbatim.

The curl commands are the seed's own, character for character; the tests change only the host
and port (the seed uses both localhost:8768 and localhost:5885) and fill the `{key}`-style
placeholders. The documented answers are the seed's response bodies, parsed.
"""

from __future__ import annotations

from typing import Any

#: The seed's curl command for each operation.
CURL: dict[str, str] = {
    "CREATE": (
        "curl -i -X POST http://localhost:8768/v1/object -H 'Content-Type: application/js"
        'on\' --data-raw \'{"msg_type": 0, "objects": [{"rotation_handle": [{"left_type": "'
        'test", "left_x": 0, "left_y": 0, "right_x": 0, "right_y": 0, "right_type": ""}, '
        '{"left_type": "", "left_x": 0, "left_y": 0, "right_x": 0, "right_y": 0, "right_t'
        'ype": ""}, {"left_type": "", "left_x": 0, "left_y": 0, "right_x": 0, "right_y": '
        '0, "right_type": ""}, {"left_type": "", "left_x": 0, "left_y": 0, "right_x": 0, '
        '"right_y": 0, "right_type": ""}], "euler_rotation": [0, 0, 0], "scale": [1, 1, 2'
        '], "name": "Test Object 123464", "timestamp": 123456789, "frame": 0, "scale_hand'
        'le": [{"left_type": "test", "left_x": 0, "left_y": 0, "right_x": 0, "right_y": 0'
        ', "right_type": ""}, {"left_type": "", "left_x": 0, "left_y": 0, "right_x": 0, "'
        'right_y": 0, "right_type": ""}, {"left_type": "", "left_x": 0, "left_y": 0, "rig'
        'ht_x": 0, "right_y": 0, "right_type": ""}], "subtype": "Sphere", "translation_ha'
        'ndle": [{"left_type": "test", "left_x": 0, "left_y": 0, "right_x": 0, "right_y":'
        ' 0, "right_type": ""}, {"left_type": "", "left_x": 0, "left_y": 0, "right_x": 0,'
        ' "right_y": 0, "right_type": ""}, {"left_type": "", "left_x": 0, "left_y": 0, "r'
        'ight_x": 0, "right_y": 0, "right_type": ""}], "quaternion_rotation": [0, 1, 0, 0'
        '], "owner": "", "translation": [0, 0, 1], "type": "Curve", "assets": ["Asset_5"]'
        "}]}'"
    ),
    "UPDATE": (
        "curl -i -X POST 'http://localhost:8768/v1/object/{key}' -H 'Content-Type: applic"
        'ation/json\' --data-raw \'{"msg_type": 0, "objects": [{"subtype": "Sphere", "frame'
        '": 0, "type": "Curve", "name": "Test Object 123464"}]}\''
    ),
    "GET": ("curl -i 'http://localhost:8768/v1/object/{key}'"),
    "DELETE": ("curl -i -X DELETE 'http://localhost:8768/v1/object/{key}'"),
    "QUERY": (
        "curl -i -X POST http://localhost:5885/v1/object/query -H 'Content-Type: applicat"
        'ion/json\' --data-raw \'{"objects": [{"name": "test", "assets": ["TestAsset10"]}]}'
        "'"
    ),
    "LOCK": ("curl -i 'http://localhost:8768/v1/object/{key}/lock?device=123'"),
    "UNLOCK": ("curl -i -X DELETE 'http://localhost:8768/v1/object/{key}/lock?device=123'"),
    "ASSET_ADD": (
        "curl -i -X PUT 'http://localhost:8768/v1/object/{object_key}/asset/{asset_key}'"
    ),
    "ASSET_REMOVE": (
        "curl -i -X DELETE 'http://localhost:8768/v1/object/{object_key}/asset/{asset_key}'"
    ),
}

DOCUMENTED_CREATE: dict[str, Any] = {"num_records": 1, "objects": [{"key": "jklmnop"}]}

DOCUMENTED_UPDATE: dict[str, Any] = {"num_records": 1, "objects": [{"key": "jklmnop"}]}

DOCUMENTED_GET: dict[str, Any] = {
    "msg_type": 2,
    "err_code": 100,
    "num_records": 1,
    "objects": [
        {
            "name": "Test Object 123464",
            "type": "Curve",
            "subtype": "Sphere",
            "frame": 0,
            "timestamp": 123456789,
            "translation_handle": [
                {
                    "left_type": "test",
                    "left_x": 0,
                    "left_y": 0,
                    "right_type": "",
                    "right_x": 0,
                    "right_y": 0,
                },
                {
                    "left_type": "",
                    "left_x": 0,
                    "left_y": 0,
                    "right_type": "",
                    "right_x": 0,
                    "right_y": 0,
                },
                {
                    "left_type": "",
                    "left_x": 0,
                    "left_y": 0,
                    "right_type": "",
                    "right_x": 0,
                    "right_y": 0,
                },
            ],
            "rotation_handle": [
                {
                    "left_type": "test",
                    "left_x": 0,
                    "left_y": 0,
                    "right_type": "",
                    "right_x": 0,
                    "right_y": 0,
                },
                {
                    "left_type": "",
                    "left_x": 0,
                    "left_y": 0,
                    "right_type": "",
                    "right_x": 0,
                    "right_y": 0,
                },
                {
                    "left_type": "",
                    "left_x": 0,
                    "left_y": 0,
                    "right_type": "",
                    "right_x": 0,
                    "right_y": 0,
                },
                {
                    "left_type": "",
                    "left_x": 0,
                    "left_y": 0,
                    "right_type": "",
                    "right_x": 0,
                    "right_y": 0,
                },
            ],
            "scale_handle": [
                {
                    "left_type": "test",
                    "left_x": 0,
                    "left_y": 0,
                    "right_type": "",
                    "right_x": 0,
                    "right_y": 0,
                },
                {
                    "left_type": "",
                    "left_x": 0,
                    "left_y": 0,
                    "right_type": "",
                    "right_x": 0,
                    "right_y": 0,
                },
                {
                    "left_type": "",
                    "left_x": 0,
                    "left_y": 0,
                    "right_type": "",
                    "right_x": 0,
                    "right_y": 0,
                },
            ],
            "transform": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2, 1, 0, 0, 0, 1],
            "assets": ["Asset_5"],
        }
    ],
}

DOCUMENTED_QUERY: dict[str, Any] = {
    "msg_type": 2,
    "err_code": 100,
    "num_records": 1,
    "objects": [
        {
            "name": "Test Object 123464",
            "type": "Curve",
            "subtype": "Sphere",
            "frame": 0,
            "timestamp": 123456789,
            "translation_handle": [
                {
                    "left_type": "test",
                    "left_x": 0,
                    "left_y": 0,
                    "right_type": "",
                    "right_x": 0,
                    "right_y": 0,
                },
                {
                    "left_type": "",
                    "left_x": 0,
                    "left_y": 0,
                    "right_type": "",
                    "right_x": 0,
                    "right_y": 0,
                },
                {
                    "left_type": "",
                    "left_x": 0,
                    "left_y": 0,
                    "right_type": "",
                    "right_x": 0,
                    "right_y": 0,
                },
            ],
            "rotation_handle": [
                {
                    "left_type": "test",
                    "left_x": 0,
                    "left_y": 0,
                    "right_type": "",
                    "right_x": 0,
                    "right_y": 0,
                },
                {
                    "left_type": "",
                    "left_x": 0,
                    "left_y": 0,
                    "right_type": "",
                    "right_x": 0,
                    "right_y": 0,
                },
                {
                    "left_type": "",
                    "left_x": 0,
                    "left_y": 0,
                    "right_type": "",
                    "right_x": 0,
                    "right_y": 0,
                },
                {
                    "left_type": "",
                    "left_x": 0,
                    "left_y": 0,
                    "right_type": "",
                    "right_x": 0,
                    "right_y": 0,
                },
            ],
            "scale_handle": [
                {
                    "left_type": "test",
                    "left_x": 0,
                    "left_y": 0,
                    "right_type": "",
                    "right_x": 0,
                    "right_y": 0,
                },
                {
                    "left_type": "",
                    "left_x": 0,
                    "left_y": 0,
                    "right_type": "",
                    "right_x": 0,
                    "right_y": 0,
                },
                {
                    "left_type": "",
                    "left_x": 0,
                    "left_y": 0,
                    "right_type": "",
                    "right_x": 0,
                    "right_y": 0,
                },
            ],
            "transform": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2, 1, 0, 0, 0, 1],
            "assets": ["Asset_5"],
        }
    ],
}
