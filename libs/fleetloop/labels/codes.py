"""Label vocabulary shared by the labeler and its reference: enum codes of common.proto mapped to
taxonomy tag names, the object classes each agent rule counts, and the ego speed bands."""

from fleetloop.v1 import common_pb2 as pb

MPS_TO_KPH = 3.6

VEHICLE_CLASSES = (pb.OBJECT_CLASS_CAR, pb.OBJECT_CLASS_TRUCK, pb.OBJECT_CLASS_BUS,
                   pb.OBJECT_CLASS_MOTORCYCLE, pb.OBJECT_CLASS_TRICYCLE)
VRU_CLASSES = (pb.OBJECT_CLASS_PEDESTRIAN, pb.OBJECT_CLASS_CYCLIST, pb.OBJECT_CLASS_TRICYCLE,
               pb.OBJECT_CLASS_MOTORCYCLE)
RARE_CLASSES = (pb.OBJECT_CLASS_UNKNOWN, pb.OBJECT_CLASS_ANIMAL)
CLASS_TAGS = {
    pb.OBJECT_CLASS_CAR: "agent.car", pb.OBJECT_CLASS_TRUCK: "agent.truck",
    pb.OBJECT_CLASS_BUS: "agent.bus", pb.OBJECT_CLASS_PEDESTRIAN: "agent.pedestrian",
    pb.OBJECT_CLASS_CYCLIST: "agent.cyclist", pb.OBJECT_CLASS_TRICYCLE: "agent.tricycle",
    pb.OBJECT_CLASS_MOTORCYCLE: "agent.motorcycle", pb.OBJECT_CLASS_CONE: "agent.cone",
    pb.OBJECT_CLASS_ANIMAL: "agent.animal", pb.OBJECT_CLASS_UNKNOWN: "agent.unknown",
}
WEATHER_TAGS = {pb.WEATHER_CLEAR: "weather.clear", pb.WEATHER_CLOUDY: "weather.cloudy",
                pb.WEATHER_RAIN: "weather.rain", pb.WEATHER_SNOW: "weather.snow",
                pb.WEATHER_FOG: "weather.fog"}
LIGHT_TAGS = {pb.LIGHT_DAY: "light.day", pb.LIGHT_DUSK: "light.dusk", pb.LIGHT_NIGHT: "light.night"}
ROAD_TAGS = {pb.ROAD_TYPE_PARK: "road.park", pb.ROAD_TYPE_URBAN: "road.urban",
             pb.ROAD_TYPE_TUNNEL: "road.tunnel", pb.ROAD_TYPE_ELEVATED: "road.elevated",
             pb.ROAD_TYPE_HIGHWAY: "road.highway"}
JUNCTION_TAGS = {pb.JUNCTION_TYPE_SIGNALIZED: "junction.signalized",
                 pb.JUNCTION_TYPE_UNSIGNALIZED: "junction.unsignalized",
                 pb.JUNCTION_TYPE_ROUNDABOUT: "junction.roundabout"}
MODE_TAGS = {pb.DRIVING_MODE_AUTONOMOUS: "mode.autonomous", pb.DRIVING_MODE_REMOTE: "mode.remote",
             pb.DRIVING_MODE_MANUAL: "mode.manual"}
TASK_TAGS = {pb.TASK_STATE_IDLE: "task.idle", pb.TASK_STATE_RUNNING: "task.running",
             pb.TASK_STATE_PAUSED: "task.paused", pb.TASK_STATE_DONE: "task.done"}
CONNECTIVITY_TAGS = {pb.CONNECTIVITY_CELLULAR: "connectivity.cellular",
                     pb.CONNECTIVITY_WIFI: "connectivity.wifi", pb.CONNECTIVITY_NONE: "connectivity.none"}
SPEED_BANDS = ("ego.speed.crawl", "ego.speed.low", "ego.speed.medium", "ego.speed.high",
               "ego.speed.very_high")
